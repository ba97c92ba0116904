"""Which deaths restart a role in place, and how many times."""

from __future__ import annotations

import pytest

from instructray.actors.group import RoleError
from instructray.orchestrator.recovery import RoleRestarts


class FakeGroup:
    def __init__(self) -> None:
        self.restarts = 0

    def restart(self) -> None:
        self.restarts += 1


def _restarts(limit: int = 2) -> tuple[RoleRestarts, FakeGroup, FakeGroup]:
    reference, rollout = FakeGroup(), FakeGroup()
    return RoleRestarts({"reference": reference, "rollout": rollout}, limit), reference, rollout  # type: ignore[dict-item]


def test_a_dead_or_hung_stateless_role_restarts_until_the_budget_is_spent() -> None:
    restarts, reference, rollout = _restarts(limit=2)
    died = RoleError("reference (rank 0 of 1) died: gone", died=True, role="reference")
    hung = RoleError("rollout (rank 0 of 1) did not answer", hung=True, role="rollout")
    assert restarts.restart(died) is reference
    assert restarts.restart(hung) is rollout
    assert (reference.restarts, rollout.restarts, restarts.done) == (1, 1, 2)
    with pytest.raises(RoleError) as spent:
        restarts.restart(died)
    assert spent.value is died and reference.restarts == 1
    notes = restarts.drain()
    assert [n for n, _ in notes] == [1, 2]
    assert notes[0][1].startswith("reference (rank 0 of 1) died: gone; restart 1 of 2: the ")
    assert "the rollout role started again in place" in notes[1][1]
    assert restarts.drain() == []


@pytest.mark.parametrize(
    "err",
    [
        RoleError("policy (rank 0 of 2) died", died=True, role="policy"),  # a trainer
        RoleError("critic (rank 0 of 1) died", died=True, role="critic"),
        RoleError("reference (rank 0 of 1) failed: ValueError", role="reference"),  # a bug
        RoleError("an actor died", died=True, role=None),
    ],
)
def test_other_failures_are_raised_again_untouched(err: RoleError) -> None:
    restarts, reference, rollout = _restarts()
    with pytest.raises(RoleError) as raised:
        restarts.restart(err)
    assert raised.value is err
    assert (reference.restarts, rollout.restarts, restarts.done, restarts.notes) == (0, 0, 0, {})
