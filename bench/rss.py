"""Peak memory of a run's processes: RSS of this process's descendants sampled in a thread,
grouped by Ray actor class (process title ``ray::<Class>``) and vLLM process title."""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil


def process_group(proc: psutil.Process) -> str | None:
    """``ray::<Class>`` for Ray workers, ``VLLM::EngineCore`` for vLLM's engine process."""
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "EngineCore" in cmd:
        return "VLLM::EngineCore"
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    if "VLLM::" in cmd:
        return cmd.split()[0]
    return None


class RSSSampler:
    """Samples the RSS of this process's descendants (so other jobs' Ray clusters on the box
    are not counted) every ``period`` seconds in a background thread. `report` attributes to a
    run only the processes of its own actors (and the vLLM processes under them), so actors of
    the previous run that are still exiting are listed apart."""

    def __init__(self, period: float = 0.5):
        self.period = period
        self.root = psutil.Process()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.timeline: list[dict[int, int]] = []
            self.info: dict[int, dict[str, Any]] = {}
            self.peak_driver = 0
            self.started = time.time()

    def start(self) -> RSSSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        rows: dict[int, tuple[str, int, psutil.Process]] = {}
        for proc in self.root.children(recursive=True):
            group = process_group(proc)
            if group is None:
                continue
            try:
                rows[proc.pid] = (group, proc.memory_info().rss, proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        driver = self.root.memory_info().rss
        now = time.time() - self.started
        with self._lock:
            for pid, (group, _, proc) in rows.items():
                entry = self.info.get(pid)
                if entry is None:
                    entry = self.info[pid] = {"group": group, "first": now}
                    entry |= {"ppid": _safe(proc.ppid), "omp": _omp_threads(proc)}
                if group != "ray::IDLE":  # a worker's title goes IDLE -> ray::<Actor>
                    entry["group"] = group
                entry["last"] = now
            self.timeline.append({pid: rss for pid, (_, rss, _) in rows.items()})
            self.peak_driver = max(self.peak_driver, driver)

    def report(self, roles: dict[int, str] | None = None) -> dict[str, Any]:
        """Peak RSS (MiB) per actor class (max over its processes) and per process with its
        role, the peak over samples of their summed RSS, the driver, and other processes."""
        roles = dict(roles or {})
        mib = 2**20
        with self._lock:
            for _ in range(3):  # vLLM's processes under our actors (engine, then its worker)
                for pid, entry in self.info.items():
                    if entry["group"].startswith("VLLM::") and entry.get("ppid") in roles:
                        roles.setdefault(pid, "rollout (vLLM process)")
            peak = {pid: max(s.get(pid, 0) for s in self.timeline) for pid in self.info}
            groups: dict[str, int] = {}
            procs, others = [], []
            for pid, entry in sorted(self.info.items(), key=lambda kv: kv[1]["first"]):
                row = {
                    "pid": pid,
                    "group": entry["group"],
                    "role": roles.get(pid),
                    "peak_mib": peak[pid] // mib,
                    "seen_s": [round(entry["first"], 1), round(entry["last"], 1)],
                    "OMP_NUM_THREADS": entry.get("omp"),
                }
                if pid in roles:
                    groups[entry["group"]] = max(groups.get(entry["group"], 0), peak[pid])
                    procs.append(row)
                elif entry["group"] != "ray::IDLE":
                    others.append(row)
            total = max((sum(s.get(p, 0) for p in roles) for s in self.timeline), default=0)
            return {
                "peak_mib_by_group": {g: v // mib for g, v in sorted(groups.items())},
                "peak_mib_total_concurrent": total // mib,
                "peak_mib_driver": self.peak_driver // mib,
                "peak_mib_by_process": procs,
                "other_processes": others,
                "samples": len(self.timeline),
                "note": "RSS includes shared pages (libraries, Ray object-store mappings); "
                "total = max over samples of the sum over this run's actor and vLLM "
                "processes; seen_s = first/last sample (s after the run started) with the "
                "process alive; other_processes: Ray system agents and actors of an earlier "
                "run still exiting",
            }


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _omp_threads(proc: psutil.Process) -> str | None:
    env = _safe(proc.environ)
    return env.get("OMP_NUM_THREADS") if env else None
