"""The per-call sections a trainer rank receives carry exactly what its loss reads."""

from __future__ import annotations

import dataclasses
import pickle

from instructray.config import DPOStageConfig, PPOStageConfig
from instructray.config.rank import CriticLossParams, DPOLossParams, PolicyLossParams


def test_ppo_params_come_from_their_stage_fields() -> None:
    cfg = PPOStageConfig.model_validate(
        {
            "sampling": {"temperature": 0.7},
            "clip_eps": 0.1,
            "entropy_coef": 0.01,
            "ptx_coef": 0.5,
            "value_clip_eps": None,
            "value_loss_coef": 0.25,
        }
    )
    assert PolicyLossParams.of(cfg) == PolicyLossParams(
        temperature=0.7, clip_eps=0.1, entropy_coef=0.01, ptx_coef=0.5
    )
    assert CriticLossParams.of(cfg) == CriticLossParams(value_clip_eps=None, value_loss_coef=0.25)


def test_dpo_params_come_from_their_stage_fields() -> None:
    cfg = DPOStageConfig.model_validate({"beta": 0.3, "loss_type": "ipo", "label_smoothing": 0.1})
    assert DPOLossParams.of(cfg) == DPOLossParams(beta=0.3, loss_type="ipo", label_smoothing=0.1)


def test_params_are_small_and_frozen() -> None:
    params = PolicyLossParams.of(PPOStageConfig())
    whole = len(pickle.dumps(PPOStageConfig()))
    assert len(pickle.dumps(params)) * 5 < whole  # what crosses the Ray boundary per call
    assert dataclasses.fields(params) and dataclasses.is_dataclass(params)
    try:
        params.clip_eps = 1.0  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("params must be frozen")
