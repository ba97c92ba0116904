"""Progress of a job as its run folder shows it: metrics.jsonl, summary.json, checkpoints/."""

from __future__ import annotations

import json
import os
import threading
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_INDEXED_FILES = 256


@dataclass
class _Index:
    inode: int
    starts: array = field(default_factory=lambda: array("q"))  # byte offset of each full line
    end: int = 0  # byte offset just past the last complete line


class MetricsReader:
    """Reads metrics.jsonl by row number without rereading the file on every poll.

    The file only grows (one JSON line per step), so the byte offset of every complete line is
    remembered and ``since=N`` seeks straight to row N; a partly written last line is left for
    the next read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, _Index] = {}

    def _update(self, path: Path, f: Any, size: int, inode: int) -> _Index:
        """Index the lines appended since the last read; call with the lock held."""
        key = str(path)
        idx = self._files.get(key)
        if idx is None or idx.inode != inode or size < idx.end:
            idx = self._files[key] = _Index(inode=inode)
            if len(self._files) > MAX_INDEXED_FILES:
                self._files.pop(next(iter(self._files)))
        if size > idx.end:
            f.seek(idx.end)
            chunk = f.read(size - idx.end)
            pos = 0
            while (nl := chunk.find(b"\n", pos)) != -1:
                idx.starts.append(idx.end + pos)
                pos = nl + 1
            idx.end += pos
        return idx

    def read(self, run_dir: Path, since: int = 0, limit: int = 10_000) -> tuple[list[dict], int]:
        """Rows ``since`` .. ``since+limit`` and the cursor to pass as the next ``since``."""
        path = run_dir / "metrics.jsonl"
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return [], 0
        with f:
            st = os.fstat(f.fileno())
            with self._lock:
                idx = self._update(path, f, st.st_size, st.st_ino)
                total = len(idx.starts)
                if since >= total:
                    return [], total
                stop = min(total, since + limit)
                begin = idx.starts[since]
                stop_at = idx.starts[stop] if stop < total else idx.end
            f.seek(begin)
            raw = f.read(stop_at - begin)
        rows = []
        for line in raw.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # never written by RunLogger; skip rather than fail the whole read
        return rows, stop

    def tail(self, run_dir: Path) -> tuple[int, dict | None]:
        """(number of rows, the last row), in one open of the file."""
        path = run_dir / "metrics.jsonl"
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return 0, None
        with f:
            st = os.fstat(f.fileno())
            with self._lock:
                idx = self._update(path, f, st.st_size, st.st_ino)
                total = len(idx.starts)
                if total == 0:
                    return 0, None
                begin, end = idx.starts[-1], idx.end
            f.seek(begin)
            raw = f.read(end - begin)
        try:
            return total, json.loads(raw)
        except ValueError:
            return total, None


def read_summary(run_dir: Path) -> dict | None:
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def artifacts(run_dir: Path, summary: dict | None) -> dict[str, Any]:
    """The files a run has produced so far (paths as the job wrote them)."""
    out: dict[str, Any] = {"run_dir": str(run_dir)}
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        if (run_dir / name).is_file():
            out[name.split(".")[0]] = str(run_dir / name)
    if (run_dir / "tensorboard").is_dir():
        out["tensorboard"] = str(run_dir / "tensorboard")
    checkpoints = {
        stage: info["checkpoint"]
        for stage, info in ((summary or {}).get("stages") or {}).items()
        if isinstance(info, dict) and info.get("checkpoint")
    }
    if checkpoints:
        out["checkpoints"] = checkpoints
    return out
