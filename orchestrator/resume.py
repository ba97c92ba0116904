"""Mid-stage train states of one stage: saved every ``output.train_state_every`` steps, and
the newest one loaded when the job is resumed (`instructray run --resume RUN_DIR`).

Each trainable role's ranks write their own part (`RankActor.save_train_state`); the driver
adds ``driver.pt`` with what only it knows (step, data position, KL coefficient, rollouts not
yet trained on, the monitor's baseline, the stage's metrics so far)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructray.actors.group import ActorGroup
from instructray.config import ConfigError
from instructray.orchestrator.context import JobContext
from instructray.training.train_state import (
    commit,
    latest_complete,
    load_driver_state,
    partial_dir,
    remove_partial,
    save_driver_state,
)


@dataclass
class StageResume:
    stage: str
    root: Path
    every: int
    keep_last: int
    step: int = 0
    """The step the stage continues after (0: it starts from the beginning)."""
    source: Path | None = None
    """The complete train state it continues from."""

    @classmethod
    def open(cls, ctx: JobContext, stage: str) -> StageResume:
        """A fresh run starts at step 0; a resumed one at its newest complete train state.
        Saves that never completed are removed either way."""
        out = ctx.cfg.output
        root = ctx.run_dir / "train_state" / stage
        resume = cls(stage, root, out.train_state_every, out.train_states_kept)
        for partial in remove_partial(resume.root):
            ctx.log.info(f"[{stage}] removed an unfinished train state: {partial}")
        found = latest_complete(resume.root) if ctx.resuming else None
        if found is not None:
            resume.step, resume.source = found
            ctx.log.info(f"[{stage}] resuming after step {resume.step} from {resume.source}")
            ctx.log.record_resume(stage, resume.step)
        elif ctx.resuming:
            ctx.log.info(f"[{stage}] no train state saved: the stage starts from its beginning")
            ctx.log.record_resume(stage, 0)
        return resume

    def due(self, step: int, total: int) -> bool:
        """Every ``every`` steps, but not at the last one: the stage's checkpoint follows."""
        return self.every > 0 and step % self.every == 0 and step < total

    def save(self, step: int, roles: dict[str, ActorGroup], driver: dict[str, Any]) -> Path:
        tmp = partial_dir(self.root, step)
        tmp.mkdir(parents=True, exist_ok=True)
        for name, group in roles.items():
            folder = str(tmp / name)
            group.call(lambda a: a.save_train_state, folder)
        sizes = {name: group.world_size for name, group in roles.items()}
        save_driver_state(tmp, {"step": step, "world_sizes": sizes, **driver})
        return commit(self.root, step, self.keep_last)

    def load(self, roles: dict[str, ActorGroup]) -> dict[str, Any]:
        """Every role's ranks load their part; returns the driver's part."""
        assert self.source is not None
        driver = load_driver_state(self.source)
        sizes = {name: group.world_size for name, group in roles.items()}
        if driver["world_sizes"] != sizes:
            raise ConfigError(
                f"{self.source} was saved by ranks {driver['world_sizes']}, this job has "
                f"{sizes}: ZeRO partitions load only into as many ranks as wrote them. Resume "
                f"with the run's own resources.*.actors"
            )
        for name, group in roles.items():
            folder = str(self.source / name)
            group.call(lambda a: a.load_train_state, folder)
        return driver

    def load_evals(self, group: ActorGroup) -> dict[str, Any]:
        """A supervised stage's one trainable role: loaded when resuming; returns the
        measurements the stage saved with it (empty when it starts from the beginning)."""
        if not self.step:
            return {}
        return dict(self.load({group.placement.name: group})["evals"])
