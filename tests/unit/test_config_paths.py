"""Every path-valued config field is marked with its kind, so confining and checking paths
(the job service, the CLI's pre-flight) works from one list that a new field cannot slip past."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from instructray.config import (
    MODEL_PRESETS,
    JobConfig,
    PathKind,
    Section,
    get_path,
    path_fields,
    set_path,
)
from instructray.config.paths import INPUT_PATH, path_marker

PATH_LIKE_SUFFIXES = ("_dir", "_path", "_file", "_checkpoint")

EXPECTED = {
    "model.base": PathKind.MODEL,
    "model.sft_checkpoint": PathKind.MODEL,
    "model.reward_checkpoint": PathKind.MODEL,
    "data.pretrain": PathKind.INPUT,
    "data.sft": PathKind.INPUT,
    "data.preferences": PathKind.INPUT,
    "data.prompts": PathKind.INPUT,
    "data.eval_prompts": PathKind.INPUT,
    "rm.labeler.fluency_model": PathKind.MODEL,
    "rollout.shm_dir": PathKind.SHM,
    "output.run_dir": PathKind.OUTPUT,
    "output.cache_dir": PathKind.OUTPUT,
}


def _types_in(annotation: Any) -> set[Any]:
    """The annotation and every type argument inside it, at any depth."""
    found, stack = set(), [annotation]
    while stack:
        item = stack.pop()
        found.add(item)
        stack.extend(typing.get_args(item))
    return found


def unmarked_path_like(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Fields (nested sections too) that look like paths — a pathlib.Path anywhere in their
    type, or a name ending in _dir/_path/_file/_checkpoint — but carry no PathField marker.
    Written without `path_fields`, so it checks the walker instead of trusting it."""
    missing = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        inner = _types_in(field.annotation)
        path_like = any(isinstance(t, type) and issubclass(t, Path) for t in inner)
        if (path_like or name.endswith(PATH_LIKE_SUFFIXES)) and path_marker(field) is None:
            missing.append(dotted)
        for t in inner:
            if isinstance(t, type) and issubclass(t, BaseModel):
                missing += unmarked_path_like(t, f"{dotted}.")
    return missing


def all_path_like(model: type[BaseModel], prefix: str = "") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        inner = _types_in(field.annotation)
        if any(isinstance(t, type) and issubclass(t, Path) for t in inner) or name.endswith(
            PATH_LIKE_SUFFIXES
        ):
            names.add(f"{prefix}{name}")
        for t in inner:
            if isinstance(t, type) and issubclass(t, BaseModel):
                names |= all_path_like(t, f"{prefix}{name}.")
    return names


def test_every_path_like_field_of_the_job_config_is_marked():
    assert unmarked_path_like(JobConfig) == []


def test_the_walker_lists_exactly_the_path_fields_with_their_kinds():
    found = {f.name: f.kind for f in path_fields(JobConfig)}
    assert found == EXPECTED
    assert all_path_like(JobConfig) <= set(found)  # every path-like field is walked
    assert len(list(path_fields(JobConfig))) == len(EXPECTED)  # each once


def test_presets_are_names_not_paths():
    fields = {f.name: f.marker for f in path_fields(JobConfig)}
    assert fields["model.base"].presets == MODEL_PRESETS == ("tiny", "smollm2")
    assert fields["rm.labeler.fluency_model"].presets == MODEL_PRESETS
    assert fields["model.sft_checkpoint"].presets == ()
    assert fields["model.base"].is_preset("tiny") and not fields["model.base"].is_preset("/tiny")


class _Inner(Section):
    logs_dir: str = "x"  # unmarked, found by its name
    kept: Annotated[Path | None, INPUT_PATH] = None


class _Outer(Section):
    where: Path | None = None  # unmarked, found by its type
    inner: _Inner | None = None
    items: list[_Inner] = Field(default_factory=list)
    count: int = 0


def test_the_check_fails_on_an_unmarked_path_field():
    """The guard above can fail: unmarked fields in a section, nested optionally or in a list."""
    assert unmarked_path_like(_Outer) == ["where", "inner.logs_dir", "items.logs_dir"]
    # A marked field in a list of sections has no dotted name: the walker skips it, and the
    # subset check of the test above would fail.
    assert [f.name for f in path_fields(_Outer)] == ["inner.kept"]
    assert all_path_like(_Outer) - {f.name for f in path_fields(_Outer)} == {
        "where",
        "inner.logs_dir",
        "items.logs_dir",
        "items.kept",
    }


def test_get_and_set_keep_each_fields_type():
    cfg = JobConfig()
    assert get_path(cfg, "rollout.shm_dir") == "/dev/shm"
    assert get_path(cfg, "data.eval_prompts") is None
    set_path(cfg, "rollout.shm_dir", Path("/dev/shm/ir"))
    assert cfg.rollout.shm_dir == "/dev/shm/ir"  # a str field stays a str
    set_path(cfg, "data.eval_prompts", Path("/data/eval.jsonl"))
    assert cfg.data.eval_prompts == Path("/data/eval.jsonl")
    set_path(cfg, "rm.labeler.fluency_model", Path("/models/lm"))
    assert get_path(cfg, "rm.labeler.fluency_model") == "/models/lm"
    assert get_path(_Outer(), "inner.kept") is None  # an unset section


def test_a_field_with_two_markers_is_an_error():
    class Twice(Section):
        a: Annotated[Annotated[Path, INPUT_PATH], INPUT_PATH] = Path("x")

    with pytest.raises(TypeError, match="2 PathField markers"):
        list(path_fields(Twice))


def test_union_and_annotated_sections_are_walked():
    class Holder(Section):
        opt: Annotated[_Inner | None, "doc"] = None

    assert [f.name for f in path_fields(Holder)] == ["opt.kept"]
