"""Resumable training state on disk: RUN_DIR/train_state/<stage>/step-000012/.

A model *checkpoint* (RUN_DIR/checkpoints/<stage>) is an HF folder that ships; a *train state*
is what continues a stage mid-way: each trainable role's DeepSpeed checkpoint (weights,
optimizer, ZeRO partitions, LR scheduler), every rank's RNG, and the driver's ``driver.pt``
(step counter, data position, KL controller, rollouts not yet trained on, ...).

A train state is written into ``step-N.partial/`` and renamed to ``step-N/`` only after every
file is flushed to disk and the ``COMPLETE`` marker is written, so a crash mid-write leaves a
``.partial`` folder that is never read (and removed by the next save or resume)."""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"
DRIVER_FILE = "driver.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def partial_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}.partial"


def complete_steps(root: Path) -> list[tuple[int, Path]]:
    """The complete train states under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / COMPLETE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_complete(root: Path) -> tuple[int, Path] | None:
    steps = complete_steps(root)
    return steps[-1] if steps else None


def remove_partial(root: Path) -> list[Path]:
    """Delete the folders of saves that never completed; returns them."""
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.endswith(".partial")]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(root: Path, step: int, keep_last: int) -> Path:
    """Seal ``partial_dir(root, step)``: fsync, write COMPLETE, rename; keep the newest
    ``keep_last`` complete states."""
    tmp, final = partial_dir(root, step), step_dir(root, step)
    _fsync_tree(tmp)
    (tmp / COMPLETE).write_text(f"{step}\n")
    _fsync_tree(tmp)
    if final.exists():  # a state of the same step from an attempt that was rolled back
        shutil.rmtree(final)
    tmp.rename(final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for _step, old in complete_steps(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_driver_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / DRIVER_FILE)


def load_driver_state(directory: Path) -> dict[str, Any]:
    # Our own file (pickled driver objects such as the monitor's baseline): weights_only=False.
    return torch.load(directory / DRIVER_FILE, weights_only=False)


def rng_state() -> dict[str, Any]:
    """Every random generator of this process: Python's, NumPy's, torch's (and CUDA's)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
