"""Which config fields name files or folders, and what kind each is.

Every path-valued field carries a `PathField` marker in its ``Annotated`` type; `path_fields`
walks a config model (nested sections included) and lists them all, so whoever confines or
checks paths (the job service, the CLI's pre-flight checks) does it from one list that a new
field cannot slip past (a unit test refuses an unmarked path-like field).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

# Base-model names that are not paths (instructray.models builds them into its cache).
MODEL_PRESETS = ("tiny", "smollm2")


class PathKind(StrEnum):
    INPUT = "input"  # a file or folder the job reads: it must exist (data files)
    MODEL = "model"  # an input that must be a model folder (config.json), or a preset name
    OUTPUT = "output"  # a folder the job creates and writes (run folder, model cache)
    SHM = "shm"  # a shared-memory folder the job writes a weights file into


@dataclass(frozen=True)
class PathField:
    """``Annotated`` metadata of a path-valued config field."""

    kind: PathKind
    presets: tuple[str, ...] = ()  # values that name a built-in model, not a path

    def is_preset(self, value: object) -> bool:
        return isinstance(value, str) and value in self.presets


INPUT_PATH = PathField(PathKind.INPUT)
MODEL_FOLDER = PathField(PathKind.MODEL)
BASE_MODEL = PathField(PathKind.MODEL, presets=MODEL_PRESETS)
OUTPUT_FOLDER = PathField(PathKind.OUTPUT)
SHM_FOLDER = PathField(PathKind.SHM)


class PathFieldInfo(NamedTuple):
    name: str  # dotted, e.g. "data.prompts"
    marker: PathField

    @property
    def kind(self) -> PathKind:
        return self.marker.kind


def _nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside an annotation (``X``, ``X | None``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType or origin is typing.Annotated:
        for arg in typing.get_args(annotation):
            yield from _nested_models(arg)


def path_marker(field: Any) -> PathField | None:
    """The `PathField` marker of a pydantic ``FieldInfo``, if it has one."""
    found = [m for m in field.metadata if isinstance(m, PathField)]
    if len(found) > 1:
        raise TypeError(f"a field carries {len(found)} PathField markers; give one")
    return found[0] if found else None


def path_fields(model: type[BaseModel], prefix: str = "") -> Iterator[PathFieldInfo]:
    """Every marked field of ``model`` and of the sections nested in it, in declaration order."""
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        marker = path_marker(field)
        if marker is not None:
            yield PathFieldInfo(dotted, marker)
        for nested in _nested_models(field.annotation):
            yield from path_fields(nested, f"{dotted}.")


def get_path(cfg: BaseModel, name: str) -> Any:
    """The value of dotted field ``name`` of a config instance (None when a section is unset)."""
    node: Any = cfg
    for part in name.split("."):
        if node is None:
            return None
        node = getattr(node, part)
    return node


def set_path(cfg: BaseModel, name: str, value: Path) -> None:
    """Set dotted field ``name`` to ``value``, as a str where the field holds a str."""
    *sections, key = name.split(".")
    holder: Any = cfg
    for part in sections:
        holder = getattr(holder, part)
    current = getattr(holder, key)
    setattr(holder, key, value if isinstance(current, Path) else str(value))
