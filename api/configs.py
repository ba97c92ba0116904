"""From a request's config (inline JSON/YAML, a preset + overrides, or a confined config path)
to the same validated `JobConfig` that `instructray run` uses, with every path confined."""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from instructray.config import (
    ConfigError,
    JobConfig,
    PathKind,
    get_path,
    path_fields,
    set_dotted,
    set_path,
    validation_problems,
)

PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Path fields the service sets itself once a config is confined (JobService.create puts every
# run in runs_root/<job id>): what a request gives there is replaced, so it is not checked.
SERVICE_SET = frozenset({"output.run_dir"})


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class InvalidConfig(ValueError):
    """→ 422: names every bad field."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class PathNotAllowed(PermissionError):
    """→ 403: a path outside the allowed roots."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class _NoAliasLoader(yaml.SafeLoader):
    """YAML anchors/aliases can expand a small body into an exponential structure; refuse them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted", event.start_mark
            )
        return super().compose_node(parent, index)


MAX_DEPTH = 32
"""Deepest nesting of objects/lists accepted in a request: a job config needs 4."""


def nesting_depth(value: Any) -> int:
    """How deep dicts and lists nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:  # deeper is refused anyway: stop walking
                stack.extend(
                    (v, depth) for v in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


TOO_DEEP = f"nests deeper than {MAX_DEPTH} levels of objects/lists"


def too_deep(value: Any) -> bool:
    return nesting_depth(value) > MAX_DEPTH


def parse_yaml_mapping(text: str, field: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as err:
        raise InvalidConfig([FieldError(field, f"not valid YAML: {err}")]) from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise InvalidConfig([FieldError(field, f"YAML {TOO_DEEP}")]) from None
    if too_deep(data):
        raise InvalidConfig([FieldError(field, f"YAML {TOO_DEEP}")])
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidConfig([FieldError(field, f"must be a mapping, got {type(data).__name__}")])
    return data


def within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def confine(raw: str | Path, roots: list[Path], field: str, base: Path) -> Path:
    """``raw`` (relative to ``base``) with symlinks and ``..`` resolved, or PathNotAllowed."""
    text = str(raw)
    if "\x00" in text:
        raise PathNotAllowed(field, "path contains a NUL byte")
    path = (base / Path(text).expanduser()).resolve()
    if not within(path, roots):
        shown = ", ".join(str(r) for r in roots)
        raise PathNotAllowed(field, f"{text!r} is outside the allowed roots ({shown})")
    return path


@functools.lru_cache(maxsize=64)
def _yaml_file(path: str, mtime_ns: int, field: str) -> dict[str, Any]:
    # Presets are read on every submission; parse each version of a file once.
    return parse_yaml_mapping(Path(path).read_text(), field)


def read_yaml_file(path: Path, field: str) -> dict[str, Any]:
    """A YAML mapping from a file (a fresh copy: callers apply overrides to it)."""
    return copy.deepcopy(_yaml_file(str(path), path.stat().st_mtime_ns, field))


def _preset_within(path: Path, root: Path) -> bool:
    """Whether a preset file, its symlinks followed, lies inside the presets folder."""
    return within(path.resolve(), [root])


def list_presets(configs_root: Path) -> list[str]:
    root = configs_root.resolve()
    if not root.is_dir():
        return []
    return sorted(
        p.stem
        for p in root.glob("*.yaml")
        if PRESET_NAME.match(p.stem) and p.is_file() and _preset_within(p, root)
    )


def load_preset(configs_root: Path, name: str) -> dict[str, Any]:
    if not PRESET_NAME.match(name):
        raise InvalidConfig([FieldError("preset", f"{name!r} is not a preset name")])
    root = configs_root.resolve()
    path = root / f"{name}.yaml"
    real = path.resolve()  # a symlink is followed before the check, as for config_path
    if not within(real, [root]):
        raise PathNotAllowed(
            "preset", f"{name!r} is a link leading outside the presets folder ({root})"
        )
    if not real.is_file():
        available = ", ".join(list_presets(root)) or "none"
        raise InvalidConfig([FieldError("preset", f"no preset {name!r} (available: {available})")])
    return read_yaml_file(real, "preset")


def load_config_path(raw: str, roots: list[Path]) -> dict[str, Any]:
    path = confine(raw, roots, "config_path", roots[0])
    if path.suffix not in (".yaml", ".yml"):
        raise PathNotAllowed("config_path", f"{raw!r} is not a .yaml/.yml file")
    if not path.is_file():
        raise InvalidConfig([FieldError("config_path", f"{raw!r} does not exist")])
    return read_yaml_file(path, "config_path")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"sft.max_examples": 128}`` → data["sft"]["max_examples"] = 128."""
    errors: list[FieldError] = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not OVERRIDE_KEY.match(key):
            errors.append(FieldError(f"overrides.{key}", "keys are dotted names like sft.lr"))
            continue
        try:
            set_dotted(data, key.split("."), value)
        except ConfigError as err:
            errors.append(FieldError(key, str(err)))
    if errors:
        raise InvalidConfig(errors)
    return data


def validate(data: dict[str, Any]) -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise InvalidConfig([FieldError(f, m) for f, m in validation_problems(err)]) from None


def _not_found(value: object, path: Path, kind: PathKind, presets: tuple[str, ...]) -> str | None:
    """Why an input ``path`` (confined already) cannot be what its field needs, or None."""
    if kind is PathKind.INPUT and not path.exists():
        return f"{str(value)!r} does not exist ({path})"
    if kind is PathKind.MODEL and not (path / "config.json").is_file():
        preset = f"not a preset ({', '.join(presets)}) and " if presets else ""
        return f"{preset}no model folder (with config.json) at {path}"
    return None


def confine_paths(cfg: JobConfig, roots: list[Path], shm_roots: list[Path]) -> JobConfig:
    """Every path-valued field of the config (`path_fields`), symlinks and ``..`` resolved
    against roots[0], confined: the shared-memory folder to ``shm_roots``, every other path to
    ``roots`` (PathNotAllowed); inputs must exist, model folders hold config.json
    (InvalidConfig). Each field is set to its resolved path."""
    errors: list[FieldError] = []
    for name, marker in path_fields(JobConfig):
        value = get_path(cfg, name)
        if value is None or name in SERVICE_SET or marker.is_preset(value):
            continue
        allowed = shm_roots if marker.kind is PathKind.SHM else roots
        path = confine(value, allowed, name, roots[0])
        problem = _not_found(value, path, marker.kind, marker.presets)
        if problem is not None:
            errors.append(FieldError(name, problem))
            continue
        set_path(cfg, name, path)
    if errors:
        raise InvalidConfig(errors)
    return cfg
