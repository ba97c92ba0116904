"""Restarting a stateless PPO role in place when one of its processes dies or hangs.

The reference, the reward model and the rollout engines hold nothing that training changed
except the engines' copy of the policy, which a weight sync restores. So their death costs one
retried iteration, not a roll-back of the whole stage to its last train state. A trainer role
(policy, critic) cannot be restarted that way: its optimizer state lives only in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from instructray.actors.group import ActorGroup, RoleError
from instructray.config import SamplingConfig
from instructray.orchestrator.stages.common import Stopwatch

STATELESS_ROLES = ("reference", "reward", "rollout")
PROBE = SamplingConfig(temperature=0.0, max_new_tokens=8)
"""Greedy, short: after a restart the engine's log-probs of its own greedy tokens must equal
the policy's, which proves the engine holds the current weights."""


@dataclass
class RoleRestarts:
    """In-place restarts of the stateless roles, within one run of a stage."""

    groups: dict[str, ActorGroup]
    """The stateless roles of this stage by name."""
    limit: int
    """At most this many; past it a death rolls the stage back like any other."""
    notes: dict[int, str] = field(default_factory=dict)
    """What happened, by restart number, for the stage to log as warnings (then cleared)."""
    done: int = 0

    def restart(self, err: RoleError) -> ActorGroup:
        """Start the role named by ``err`` again, or re-raise ``err`` when that would not
        do: not a lost process, a trainer role, or the budget spent."""
        group = self.groups.get(err.role or "")
        if not (err.restartable and group is not None and self.done < self.limit):
            raise err
        clock = Stopwatch()
        group.restart()
        self.done += 1
        self.notes[self.done] = (
            f"{err}; restart {self.done} of {self.limit}: the {err.role} role started again "
            f"in place in {clock.lap():.1f} s"
        )
        return group

    def drain(self) -> list[tuple[int, str]]:
        notes, self.notes = self.notes, {}
        return sorted(notes.items())
