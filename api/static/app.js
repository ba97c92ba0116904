// instructray dashboard: job list, submit form, and per job live charts + log tail.
// Plain browser JS (no build step); charts by the vendored Chart.js.
"use strict";

const $ = (sel) => document.querySelector(sel);
const ACTIVE = new Set(["queued", "pending", "running"]);
const RESUMABLE = new Set(["failed", "cancelled"]);
const PAGE = 20;
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g; // Ray colours its actor-log prefixes
const COLORS = ["#3559d6", "#d6553b", "#1f8a4c", "#b7791f", "#8b3fd6", "#178a9e", "#c2338f"];

// Each chart takes (row) => [[series label, value, dataset options?], ...] for the rows of
// metrics.jsonl. The PPO monitor's charts (evaluation.js) are by step and shown only with data.
const CHARTS = {
  reward: (r) => [
    [`${r.stage} reward (RM score)`, r.stage === "ppo" ? r.reward_mean : undefined],
    [`${r.stage} chosen − rejected`, r.stage === "dpo" ? r.reward_margin : undefined],
  ],
  kl: (r) => [
    ["KL (per response)", r.stage === "ppo" ? r.kl : undefined],
    ["approx KL (policy step)", r.stage === "ppo" ? r.approx_kl : undefined],
  ],
  loss: (r) => [
    [`${r.stage} loss`, r.loss],
    ["ppo value loss", r.stage === "ppo" ? r.value_loss : undefined],
    ["ppo ptx loss", r.stage === "ppo" ? r.ptx_loss : undefined],
  ],
  accuracy: (r) => [
    ["rm accuracy", r.stage === "rm" ? r.accuracy : undefined],
    ["dpo reward accuracy", r.stage === "dpo" ? r.reward_accuracy : undefined],
  ],
  throughput: (r) => [
    [`${r.stage} tokens/s`, r.tokens_per_s],
    ["rm rankings/s", r.rankings_per_s],
    ["dpo pairs/s", r.pairs_per_s],
  ],
  ...MONITOR_CHARTS,
};

const state = {
  offset: 0, total: 0, filter: "", jobId: null, job: null,
  cursor: 0, t0: null, charts: {}, logSource: null, timer: null, rowWarnings: [],
  resumes: null, resuming: null,
};

function token() { return $("#token").value.trim(); }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if ((options.method || "GET") !== "GET" && token()) headers.Authorization = `Bearer ${token()}`;
  const res = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await res.json(); } catch (_) { /* empty or non-JSON body */ }
  if (!res.ok) {
    const errors = (body && body.errors) || [];
    const detail = (body && body.detail) || res.statusText;
    const err = new Error(errors.length ? errors.map((e) => `${e.field}: ${e.message}`).join("\n") : detail);
    err.status = res.status;
    throw err;
  }
  return body;
}

function fmtTime(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

function badge(el, status) {
  el.textContent = status;
  el.className = `badge ${status}`;
}

// ---- jobs list ---------------------------------------------------------------------------
async function loadJobs() {
  const q = new URLSearchParams({ limit: PAGE, offset: state.offset });
  if (state.filter) q.append("status", state.filter);
  let page;
  try { page = await api(`/jobs?${q}`); } catch (err) { return; }
  state.total = page.total;
  const tbody = $("#jobs tbody");
  tbody.replaceChildren();
  for (const job of page.items) {
    const tr = document.createElement("tr");
    tr.dataset.id = job.id;
    if (job.id === state.jobId) tr.classList.add("selected");
    const name = document.createElement("td");
    name.textContent = job.name;
    name.title = job.id;
    const status = document.createElement("td");
    const b = document.createElement("span");
    badge(b, job.status);
    status.append(b);
    if (job.attempt) {
      const attempt = document.createElement("span");
      attempt.className = "attempt";
      attempt.textContent = `↻${job.attempt}`;
      attempt.title = `resumed ${job.attempt}×`;
      status.append(attempt);
    }
    const stage = document.createElement("td");
    stage.textContent = job.stage ? `${job.stage} · ${job.step}` : "—";
    const created = document.createElement("td");
    created.textContent = fmtTime(job.created_at);
    tr.append(name, status, stage, created);
    tr.addEventListener("click", () => selectJob(job.id));
    tbody.append(tr);
  }
  const last = Math.min(state.offset + PAGE, state.total);
  $("#page-info").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "no jobs";
  $("#prev").disabled = state.offset === 0;
  $("#next").disabled = last >= state.total;
}

// ---- submit ------------------------------------------------------------------------------
async function loadPresets() {
  const select = $("#job-source");
  let presets = [];
  try { presets = (await api("/presets")).presets; } catch (_) { /* leave only YAML */ }
  for (const name of presets) select.append(new Option(`preset: ${name}`, `preset:${name}`));
  select.append(new Option("full config (YAML)", "yaml"));
  if (presets.includes("tiny")) {
    select.value = "preset:tiny";
    $("#job-yaml").value = "stages: [sft]\nsft.max_examples: 128\nsft.batch_size: 32\n" +
      "sft.micro_batch_size: 32\noutput.tensorboard: false\n";
  }
  onSourceChange();
}

function onSourceChange() {
  const yaml = $("#job-source").value === "yaml";
  $("#yaml-label").textContent = yaml ? "Job config (YAML)" : "Overrides (YAML, dotted keys)";
}

async function submitJob(event) {
  event.preventDefault();
  const out = $("#submit-result");
  const source = $("#job-source").value;
  const text = $("#job-yaml").value;
  const body = {};
  if ($("#job-name").value.trim()) body.name = $("#job-name").value.trim();
  if (source === "yaml") body.config = text;
  else {
    body.preset = source.slice("preset:".length);
    if (text.trim()) body.overrides = text;
  }
  $("#submit-btn").disabled = true;
  out.className = "result";
  out.textContent = "submitting…";
  try {
    const res = await api("/jobs", { method: "POST", body: JSON.stringify(body) });
    out.className = "result ok";
    out.textContent = `accepted: ${res.id}`;
    state.offset = 0;
    await loadJobs();
    selectJob(res.id);
  } catch (err) {
    out.className = "result bad";
    out.textContent = `${err.status || ""} ${err.message}`.trim();
  } finally {
    $("#submit-btn").disabled = false;
  }
}

// ---- one job -----------------------------------------------------------------------------
function makeChart(key) {
  const canvas = $(`#chart-${key}`);
  return new Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      parsing: false,
      normalized: true,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: key in MONITOR_CHARTS ? "PPO step" : "seconds since first step" } },
        // tokens/s (thousands) and rankings/s or pairs/s (tens) share the throughput chart
        y: { type: key === "throughput" ? "logarithmic" : "linear" },
      },
      plugins: { legend: { labels: { boxWidth: 10, font: { size: 11 } } } },
      elements: { point: { radius: 1.5 }, line: { borderWidth: 1.5 } },
    },
  });
}

function resetCharts() {
  for (const chart of Object.values(state.charts)) chart.destroy();
  state.charts = {};
  for (const key of Object.keys(CHARTS)) {
    state.charts[key] = makeChart(key);
    const figure = $(`#chart-${key}`).closest("figure");
    if (key in MONITOR_CHARTS) figure.hidden = true;
    else figure.classList.add("empty");
  }
  state.cursor = 0;
  state.t0 = null;
  state.rowWarnings = [];
  state.resumes = null;
}

function addRows(rows) {
  for (const row of rows) {
    if (state.t0 === null) state.t0 = row.time;
    const seconds = Math.round((row.time - state.t0) * 100) / 100;
    if (row.hacking_warning === 1) state.rowWarnings.push(rowWarning(row));
    for (const [key, series] of Object.entries(CHARTS)) {
      const chart = state.charts[key];
      const x = key in MONITOR_CHARTS ? row.step : seconds;
      for (const [label, y, options] of series(row)) {
        if (typeof y !== "number") continue;
        let ds = chart.data.datasets.find((d) => d.label === label);
        if (!ds) {
          const color = COLORS[chart.data.datasets.length % COLORS.length];
          ds = { label, data: [], borderColor: color, backgroundColor: color, ...options };
          chart.data.datasets.push(ds);
        }
        ds.data.push({ x, y });
      }
    }
  }
  if (!rows.length) return;
  for (const [key, chart] of Object.entries(state.charts)) {
    const figure = chart.canvas.closest("figure");
    if (key in MONITOR_CHARTS) {
      const wasHidden = figure.hidden;
      figure.hidden = !chart.data.datasets.length;
      // Created inside a hidden figure, the canvas is 0×0 until Chart.js notices the resize.
      if (wasHidden && !figure.hidden) chart.resize();
    } else figure.classList.toggle("empty", !chart.data.datasets.length);
    chart.update("none");
  }
  showWarnings(state.job, state.rowWarnings);
}

async function pollMetrics(job) {
  const id = state.jobId;
  // A resume moves the lines its run will write again out of metrics.jsonl before it records
  // the resume in summary.json: once that shows, read the file again from its start.
  const resumes = job.resumes.length;
  if (state.resumes !== null && state.resumes !== resumes) resetCharts();
  state.resumes = resumes;
  const page = await api(`/jobs/${encodeURIComponent(id)}/metrics?since=${state.cursor}`);
  if (id !== state.jobId) return;
  state.cursor = page.next;
  addRows(page.rows);
}

function showJob(job) {
  state.job = job;
  $("#d-name").textContent = job.name;
  $("#d-id").textContent = job.id;
  $("#d-source").textContent = `via ${job.source}`;
  badge($("#d-status"), job.status);
  $("#d-stage").textContent = job.stage ? `${job.stage} · step ${job.step} (${job.metrics_count} rows)` : "—";
  $("#d-stages").textContent = job.stages_planned.join(" → ") || "—";
  $("#d-started").textContent = fmtTime(job.started_at);
  $("#d-finished").textContent = fmtTime(job.finished_at);
  $("#d-rundir").textContent = job.artifacts.run_dir || "";
  $("#d-message").textContent = job.message || "";
  $("#d-error").hidden = !job.error;
  $("#d-error").textContent = job.error || "";
  $("#d-interrupted").hidden = ACTIVE.has(job.status) || job.run_status !== "interrupted";
  const attempt = $("#d-attempt");
  attempt.hidden = !job.attempt;
  attempt.textContent = `attempt ${job.attempt + 1}`;
  attempt.title = `Ray job ${job.ray_submission_id}`;
  $("#d-resumes").textContent = describeResumes(job);
  const resume = $("#resume-btn");
  resume.hidden = !RESUMABLE.has(job.status);
  resume.disabled = state.resuming === job.id;
  const cancel = $("#cancel-btn");
  cancel.hidden = !ACTIVE.has(job.status);
  cancel.disabled = job.cancel_requested;
  cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
  showWarnings(job, state.rowWarnings);
  showEvaluation(job);
}

function describeResumes(job) {
  const parts = job.resumes.map((r) => `${r.stage} after step ${r.after_step}`);
  if (job.restarts.length) parts.push(`${job.restarts.length} stage restart(s) after an actor died`);
  return parts.join("; ") || "—";
}

async function refreshJob() {
  const id = state.jobId;
  // One refresh at a time, or two metric reads with the same cursor would add rows twice.
  if (!id || state.refreshing === id) return;
  state.refreshing = id;
  try {
    const job = await api(`/jobs/${encodeURIComponent(id)}`);
    if (id !== state.jobId) return;
    showJob(job);
    await pollMetrics(job);
  } catch (err) {
    if (err.status === 404) $("#d-message").textContent = err.message;
  } finally {
    if (state.refreshing === id) state.refreshing = null;
  }
}

function followLogs(id) {
  if (state.logSource) state.logSource.close();
  const log = $("#log");
  log.textContent = "";
  const source = new EventSource(`/jobs/${encodeURIComponent(id)}/logs?tail=300`);
  state.logSource = source;
  $("#log-state").textContent = "(live)";
  source.onmessage = (event) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(event.data.replace(ANSI, "") + "\n");
    // Keep the tail bounded: drop the oldest text once it grows large.
    if (log.textContent.length > 200000) log.textContent = log.textContent.slice(-150000);
    if (atBottom) log.scrollTop = log.scrollHeight;
  };
  source.addEventListener("warning", (event) => { $("#log-state").textContent = `(${event.data})`; });
  source.addEventListener("end", (event) => {
    $("#log-state").textContent = `(job ${event.data})`;
    source.close();
  });
}

function selectJob(id) {
  if (state.jobId !== id) {
    state.jobId = id;
    history.replaceState(null, "", `#job=${encodeURIComponent(id)}`);
    $("#empty").hidden = true;
    $("#action-result").textContent = "";
    $("#detail").hidden = false;
    resetCharts();
    resetEvaluation();
    followLogs(id);
    for (const tr of document.querySelectorAll("#jobs tbody tr")) {
      tr.classList.toggle("selected", tr.dataset.id === id);
    }
  }
  refreshJob();
}

async function cancelJob() {
  const id = state.jobId;
  const btn = $("#cancel-btn");
  btn.disabled = true;
  try {
    await api(`/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    btn.textContent = "Cancelling…";
  } catch (err) {
    btn.disabled = false;
    $("#d-message").textContent = `cancel failed: ${err.status || ""} ${err.message}`;
  }
  refreshJob();
}

async function resumeJob() {
  const id = state.jobId;
  const out = $("#action-result");
  state.resuming = id;
  $("#resume-btn").disabled = true;
  out.textContent = "";
  try {
    await api(`/jobs/${encodeURIComponent(id)}/resume`, { method: "POST" });
    followLogs(id); // the last attempt's log ended; follow the next one's
  } catch (err) {
    out.textContent = `resume failed: ${err.status || ""} ${err.message}`;
  } finally {
    state.resuming = null;
  }
  await refreshJob();
  loadJobs();
}

async function checkHealth() {
  const el = $("#health");
  try {
    const h = await api("/healthz");
    el.textContent = h.ray === "ok" ? "● Ray connected" : `● Ray: ${h.ray}`;
    el.className = `health ${h.ray === "ok" ? "ok" : "bad"}`;
  } catch (err) {
    el.textContent = "● API unreachable";
    el.className = "health bad";
  }
}

function init() {
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  $("#token").value = localStorage.getItem("instructray-token") || "";
  $("#token").addEventListener("change", () => localStorage.setItem("instructray-token", token()));
  $("#job-source").addEventListener("change", onSourceChange);
  $("#submit-form").addEventListener("submit", submitJob);
  $("#cancel-btn").addEventListener("click", cancelJob);
  $("#resume-btn").addEventListener("click", resumeJob);
  $("#status-filter").addEventListener("change", (e) => { state.filter = e.target.value; state.offset = 0; loadJobs(); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadJobs(); });
  $("#next").addEventListener("click", () => { state.offset += PAGE; loadJobs(); });
  loadPresets();
  loadJobs();
  checkHealth();
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("job");
  if (fromHash) selectJob(fromHash);
  setInterval(loadJobs, 3000);
  setInterval(refreshJob, 2000);
  setInterval(checkHealth, 10000);
}

document.addEventListener("DOMContentLoaded", init);
