"""What the eval stage leaves in a run folder: eval.json, report/ (HTML and plots); and what
summary.json says beyond stages: reward-hacking warnings, stage restarts, resumes.

Report files are the job's own output, so they are served confined: only plain files directly
in RUN_DIR/report (no subfolders, no dotfiles, no symlinks, neither for the folder nor the file,
checked on the open file descriptor), and with a Content-Security-Policy that allows no scripts.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ValidationError

from instructray.api.schemas import HackingWarning, Resume, StageRestart, Verdict

log = logging.getLogger("instructray.api")
EVAL_FILE = "eval.json"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"
# The report is job output shown on the API's origin: no scripts, nothing loaded from elsewhere,
# no forms, no plugins, and a sandbox (an opaque origin) even when opened outside the dashboard.
REPORT_CSP = (
    "default-src 'none'; script-src 'none'; object-src 'none'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self' data:; media-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
)
REPORT_HEADERS = {
    "Content-Security-Policy": REPORT_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
TEXT_TYPES = {".html": "text/html", ".htm": "text/html", ".css": "text/css", ".txt": "text/plain"}
_CACHED_EVALS = 64
RESTART_KIND = "actor_died"  # a summary.json warning that is about the run, not reward hacking
_NOFOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class _EvalCache:
    """eval.json per run folder, reread only when the file changes (the job page asks for the
    verdicts on every poll, and eval.json carries samples)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def read(self, run_dir: Path) -> dict[str, Any] | None:
        path = run_dir / EVAL_FILE
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                with self._lock:
                    hit = self._files.get(str(path))
                if hit is not None and hit[0] == key:
                    return hit[1]
                data = json.loads(f.read())
        except (OSError, ValueError):
            return None  # not written yet, or caught half-written: the same as not there yet
        if not isinstance(data, dict):
            return None
        with self._lock:
            self._files.pop(str(path), None)
            self._files[str(path)] = (key, data)
            if len(self._files) > _CACHED_EVALS:
                self._files.pop(next(iter(self._files)))
        return data


read_eval = _EvalCache().read


def _valid(model: type[BaseModel], value: Any) -> dict[str, Any] | None:
    """``value`` if it fits ``model`` (so the job view never fails on a job's odd file)."""
    try:
        model.model_validate(value)
    except ValidationError as err:
        log.debug("ignoring a %s that does not fit: %s", model.__name__, err)
        return None
    return value


def _list_of(model: type[BaseModel], summary: dict | None, key: str) -> list[dict[str, Any]]:
    found = (summary or {}).get(key)
    if not isinstance(found, list):
        return []
    return [item for item in found if _valid(model, item) is not None]


def warnings_of(summary: dict | None) -> list[dict[str, Any]]:
    """The reward-hacking warnings of summary.json ([] for runs from before they existed)."""
    found = _list_of(HackingWarning, summary, "warnings")
    return [w for w in found if w.get("kind") != RESTART_KIND]


def restarts_of(summary: dict | None) -> list[dict[str, Any]]:
    """summary.json's warnings of stages restarted in-process after an actor died."""
    found = _list_of(StageRestart, summary, "warnings")
    return [w for w in found if w.get("kind") == RESTART_KIND]


def resumes_of(summary: dict | None) -> list[dict[str, Any]]:
    """summary.json's ``resumes``: where each `instructray run --resume` continued."""
    return _list_of(Resume, summary, "resumes")


def verdicts_of(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """eval.json's verdict per checkpoint, or None without an eval.json."""
    if evaluation is None:
        return None
    found = evaluation.get("verdicts")
    if not isinstance(found, dict):
        return {}
    return {name: v for name, v in found.items() if _valid(Verdict, v) is not None}


def has_report(run_dir: Path) -> bool:
    path = run_dir / REPORT_DIR / REPORT_INDEX
    return not (run_dir / REPORT_DIR).is_symlink() and not path.is_symlink() and path.is_file()


def media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in TEXT_TYPES:
        return f"{TEXT_TYPES[suffix]}; charset=utf-8"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _plain_name(name: str) -> bool:
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


def open_report_file(run_dir: Path, name: str) -> tuple[BinaryIO, int] | None:
    """The open file RUN_DIR/report/<name> and its size, or None unless it is a plain file
    directly in a real (not symlinked) report folder."""
    if not _plain_name(name):
        return None
    try:
        folder = os.open(run_dir / REPORT_DIR, _NOFOLLOW | os.O_DIRECTORY)
    except (OSError, ValueError):
        return None
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below anyway).
        fd = os.open(name, _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=folder)
    except (OSError, ValueError):
        return None
    finally:
        os.close(folder)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), st.st_size


def iter_file(f: BinaryIO, size: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The first ``size`` bytes of ``f`` (its size when opened: the Content-Length sent)."""
    with f:
        left = size
        while left > 0 and (data := f.read(min(chunk, left))):
            left -= len(data)
            yield data
