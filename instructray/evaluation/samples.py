"""One policy's samples on a fixed prompt set, with every judge's score of each sample.

Evaluation compares policies prompt by prompt (paired win-rates), so a SampleSet is a set of
aligned columns: row i of every field belongs to prompts[i]. Validation happens once, here, so
the statistics downstream can index rows without re-checking shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _column(name: str, values: Any, dtype: type) -> np.ndarray:
    """`values` as a 1-D array of `dtype`; a ValueError names the field when it is not 1-D."""
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"SampleSet.{name} must be 1-D, got shape {array.shape}")
    return array


@dataclass
class SampleSet:
    """One policy's samples on a fixed prompt set; row i answers prompts[i] (one sample per prompt).

    lengths counts response tokens (EOS included when emitted); ended says the response stopped
    on EOS rather than being cut off; scores maps judge name -> [N] float scores (higher is
    better; the proxy reward model is one of them); kl is the summed per-token
    KL(policy || reference) of each sample in nats, or None when it was not measured;
    ref_logprob is each response's summed log-probability under the reference model (its
    fluency as the reference LM reads it), or None.
    """

    prompts: list[str]
    responses: list[str]
    lengths: np.ndarray
    ended: np.ndarray
    scores: dict[str, np.ndarray]
    kl: np.ndarray | None = None
    ref_logprob: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.prompts = list(self.prompts)
        self.responses = list(self.responses)
        self.lengths = _column("lengths", self.lengths, np.int64)
        self.ended = _column("ended", self.ended, np.bool_)
        self.scores = {
            str(name): _column(f"scores[{name!r}]", values, np.float64)
            for name, values in self.scores.items()
        }
        if self.kl is not None:
            self.kl = _column("kl", self.kl, np.float64)
        if self.ref_logprob is not None:
            self.ref_logprob = _column("ref_logprob", self.ref_logprob, np.float64)
        n = len(self.prompts)
        columns: dict[str, int] = {
            "responses": len(self.responses),
            "lengths": len(self.lengths),
            "ended": len(self.ended),
        }
        columns.update({f"scores[{k!r}]": len(v) for k, v in self.scores.items()})
        if self.kl is not None:
            columns["kl"] = len(self.kl)
        if self.ref_logprob is not None:
            columns["ref_logprob"] = len(self.ref_logprob)
        for field_name, size in columns.items():
            if size != n:
                raise ValueError(
                    f"SampleSet.{field_name} has {size} rows but there are {n} prompts; "
                    "every field needs one row per prompt"
                )
        for name, values in self.scores.items():
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise ValueError(
                    f"SampleSet.scores[{name!r}] is not finite at row {int(bad[0])} "
                    f"({values[bad[0]]}); statistics over NaN/inf scores are meaningless"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def judges(self) -> list[str]:
        """The judge names, in insertion order."""
        return list(self.scores)

    def to_rows(self, limit: int | None = 8) -> list[dict[str, Any]]:
        """The first `limit` rows (all when None) as JSON-ready dicts, for showing samples."""
        stop = len(self) if limit is None else max(0, min(limit, len(self)))
        return [
            {
                "prompt": self.prompts[i],
                "response": self.responses[i],
                "length": int(self.lengths[i]),
                "ended": bool(self.ended[i]),
                "scores": {name: float(values[i]) for name, values in self.scores.items()},
            }
            for i in range(stop)
        ]
