"""An RM-only job on user preferences (no SFT data, no task) must not crash after training
when it looks for demonstrations to normalise on (it did, losing the trained RM)."""

from __future__ import annotations

from types import SimpleNamespace

from instructray.config import load_config
from instructray.orchestrator.stages.rm import normalize_on_demonstrations


class _NoData:
    task = None

    @property
    def sft_examples(self) -> list:
        raise AssertionError("read SFT examples that the config does not have")


def test_no_demonstrations_leaves_the_offset_at_zero(tmp_path) -> None:
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    cfg = load_config(None, ["data.task=null", "stages=[rm]", f"data.preferences={prefs}"])
    logged: list[str] = []
    ctx = SimpleNamespace(cfg=cfg, data=_NoData(), log=SimpleNamespace(info=logged.append))
    assert normalize_on_demonstrations(ctx, group=None, tokenizer=None) == 0.0
    assert logged == ["[rm] no SFT demonstrations (data.sft or data.task): reward_offset stays 0"]
