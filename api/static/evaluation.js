// instructray dashboard, job page: the PPO monitor's charts, reward-hacking warnings, and the
// evaluation panel (eval.json's verdicts and win-rates, the report in a sandboxed frame).
// Loaded before app.js, which calls these; job output is only ever set as text, never as HTML.
"use strict";

const HACKING_MARKER = { showLine: false, pointStyle: "triangle", pointRadius: 7, borderColor: "#c23b3b", backgroundColor: "#c23b3b" };

// Gold judges of a monitored row: [[judge, value], ...] from monitor_gold_<judge> (scores) or
// monitor_gold_win_rate_<judge> (win rates).
function goldSeries(row, winRates) {
  const prefix = winRates ? "monitor_gold_win_rate_" : "monitor_gold_";
  return Object.keys(row)
    .filter((k) => k.startsWith(prefix) && (winRates || !k.startsWith("monitor_gold_win_rate_")))
    .sort()
    .map((k) => [k.slice(prefix.length), row[k]]);
}

const MONITOR_CHARTS = {
  monitor: (r) => [
    ["proxy (reward model)", r.monitor_proxy],
    ...goldSeries(r, false).map(([judge, y]) => [`gold: ${judge}`, y]),
    ["reward hacking warning", r.hacking_warning === 1 ? r.monitor_proxy : undefined, HACKING_MARKER],
  ],
  winrate: (r) => [
    ["proxy (reward model)", r.monitor_proxy_win_rate],
    ...goldSeries(r, true).map(([judge, y]) => [`gold: ${judge}`, y]),
  ],
};

const evaluation = { key: null, warnings: null };

// A metrics row flagged by the monitor (hacking_warning == 1): rows carry no message, so this
// one says where, and the top word's frequency ratio when the row has it.
function rowWarning(row) {
  const ratio = typeof row.monitor_top_word_ratio === "number"
    ? ` (the most gained word is ${row.monitor_top_word_ratio.toFixed(1)}× as frequent as at the first check)` : "";
  return { stage: row.stage, step: row.step, message: `reward hacking? the monitor raised a warning${ratio}` };
}

// The job's warnings (summary.json) plus those of metrics rows at steps it does not cover yet.
function showWarnings(job, rowWarnings) {
  const reported = job && job.id === state.jobId ? job.warnings || [] : [];
  const where = (w) => `${w.stage}:${w.step}`;
  const covered = new Set(reported.map(where));
  const all = [...reported, ...rowWarnings.filter((w) => !covered.has(where(w)))];
  const key = JSON.stringify(all);
  if (key === evaluation.warnings) return;
  evaluation.warnings = key;
  $("#d-hacking").hidden = !all.length;
  $("#d-hacking").title = `${all.length} reward-hacking warning(s) from the PPO monitor`;
  $("#d-warnings").hidden = !all.length;
  const items = all.map((w) => {
    const li = document.createElement("li");
    const at = w.step === null || w.step === undefined ? "" : `${w.stage || ""} step ${w.step}: `.trimStart();
    li.textContent = `${at}${w.message}`;
    return li;
  });
  $("#d-warnings ul").replaceChildren(...items);
}

function fmtInterval(w) {
  if (!w || typeof w.estimate !== "number") return "—";
  const ci = typeof w.low === "number" && typeof w.high === "number"
    ? ` (${w.low.toFixed(2)}–${w.high.toFixed(2)})` : "";
  return `${w.estimate.toFixed(2)}${ci}`;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function resetEvaluation() {
  evaluation.key = null;
  evaluation.warnings = null;
  $("#evaluation").hidden = true;
  $("#eval-report").hidden = true;
  $("#eval-report-frame").removeAttribute("src");
  $("#d-hacking").hidden = true;
  $("#d-warnings").hidden = true;
}

// Fetch eval.json when the job first has one, and again when its verdicts, status or report change.
async function showEvaluation(job) {
  const links = job.links || {};
  const key = links.eval ? JSON.stringify([job.id, job.status, job.evaluation, links.report || ""]) : null;
  if (key === evaluation.key) return;
  evaluation.key = key;
  if (!key) {
    $("#evaluation").hidden = true;
    return;
  }
  let ev;
  try {
    ev = await api(links.eval);
  } catch (err) {
    if (evaluation.key !== key) return;
    if (err.status === 404) evaluation.key = null; // being rewritten: try again on the next poll
    else showEvaluationError(err); // a malformed eval.json stays so until the job changes
    return;
  }
  if (job.id !== state.jobId || evaluation.key !== key) return;
  renderEvaluation(ev, links.report);
}

function showEvaluationError(err) {
  $("#eval-meta").textContent = "";
  $("#eval-verdicts").replaceChildren(el("li", `eval.json could not be shown: ${err.status || ""} ${err.message}`, "error"));
  $("#eval-caption").textContent = "";
  $("#eval-winrates thead").replaceChildren();
  $("#eval-winrates tbody").replaceChildren();
  $("#evaluation").hidden = false;
}

function renderVerdicts(ev) {
  const items = Object.entries(ev.verdicts || {}).map(([name, v]) => {
    const li = document.createElement("li");
    li.dataset.checkpoint = name;
    li.append(el("span", v.aligned ? "aligned" : "not aligned", `badge ${v.aligned ? "succeeded" : "failed"}`));
    if (v.possible_reward_hacking) li.append(" ", el("span", "reward hacking?", "badge hacking"));
    li.append(" ", el("span", v.message || name, "message"));
    return li;
  });
  if (!items.length) items.push(el("li", "no verdicts (no checkpoint was compared with a baseline)", "muted"));
  $("#eval-verdicts").replaceChildren(...items);
}

function renderWinRates(ev) {
  const checkpoints = Object.entries(ev.checkpoints || {}).filter(([, c]) => c.win_rate && Object.keys(c.win_rate).length);
  const judges = [...new Set([ev.proxy, ...(ev.gold || []), ...checkpoints.flatMap(([, c]) => Object.keys(c.win_rate))])]
    .filter((j) => j && checkpoints.some(([, c]) => j in c.win_rate));
  const confidence = checkpoints.length && checkpoints[0][1].confidence ? checkpoints[0][1].confidence : 0.95;
  $("#eval-caption").textContent = checkpoints.length
    ? `Win rate vs ${ev.baseline || "the baseline"} on the same prompts, ${Math.round(confidence * 100)}% CI`
    : "No checkpoint was compared with a baseline.";
  const head = el("tr");
  head.append(el("th", "checkpoint"));
  for (const judge of judges) {
    const th = el("th", judge);
    th.append(el("span", judge === ev.proxy ? " proxy" : " gold", "muted small"));
    head.append(th);
  }
  head.append(el("th", "KL"), el("th", "top gained word"));
  const rows = checkpoints.map(([name, c]) => {
    const tr = el("tr");
    tr.append(el("th", name));
    for (const judge of judges) {
      const w = c.win_rate[judge];
      const cls = !w ? "" : w.low > 0.5 ? "better" : w.high < 0.5 ? "worse" : "same";
      const td = el("td", fmtInterval(w), cls);
      td.dataset.checkpoint = name;
      td.dataset.judge = judge;
      tr.append(td);
    }
    const kl = typeof c.kl_per_sequence === "number" ? c.kl_per_sequence.toFixed(2) : "—";
    const top = (c.top_gained_words || [])[0];
    const word = top ? `"${top.word}" ${typeof top.ratio === "number" ? top.ratio.toFixed(1) : "?"}×` : "—";
    tr.append(el("td", kl), el("td", word));
    return tr;
  });
  $("#eval-winrates thead").replaceChildren(head);
  $("#eval-winrates tbody").replaceChildren(...rows);
}

function renderEvaluation(ev, report) {
  const gold = (ev.gold || []).join(", ") || "none";
  $("#eval-meta").textContent = `${ev.num_prompts ?? "?"} prompts · baseline ${ev.baseline || "none"} · proxy ${ev.proxy || "none"} · gold ${gold}`;
  renderVerdicts(ev);
  renderWinRates(ev);
  $("#eval-report").hidden = !report;
  if (report) {
    $("#eval-report-link").href = report;
    $("#eval-report-frame").setAttribute("src", report); // (re)load: the report may be rewritten
  }
  $("#evaluation").hidden = false;
}
