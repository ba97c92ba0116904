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

from instructray.config import ConfigError, JobConfig, set_dotted, validation_problems

PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
BASE_MODEL_PRESETS = ("tiny", "smollm2")
# Config fields naming files or folders the job reads (or, for cache_dir, writes).
PATH_FIELDS = (
    ("data", "pretrain"),
    ("data", "sft"),
    ("data", "preferences"),
    ("data", "prompts"),
    ("model", "sft_checkpoint"),
    ("model", "reward_checkpoint"),
    ("output", "cache_dir"),
)


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


def list_presets(configs_root: Path) -> list[str]:
    if not configs_root.is_dir():
        return []
    return sorted(
        p.stem for p in configs_root.glob("*.yaml") if p.is_file() and PRESET_NAME.match(p.stem)
    )


def load_preset(configs_root: Path, name: str) -> dict[str, Any]:
    if not PRESET_NAME.match(name):
        raise InvalidConfig([FieldError("preset", f"{name!r} is not a preset name")])
    path = configs_root / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(list_presets(configs_root)) or "none"
        raise InvalidConfig([FieldError("preset", f"no preset {name!r} (available: {available})")])
    return read_yaml_file(path, "preset")


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


def confine_paths(cfg: JobConfig, roots: list[Path]) -> JobConfig:
    """Resolve every path in the config against roots[0]; refuse any outside ``roots``."""
    base = roots[0]
    for section, key in PATH_FIELDS:
        holder = getattr(cfg, section)
        value = getattr(holder, key)
        if value is None:
            continue
        field = f"{section}.{key}"
        path = confine(value, roots, field, base)
        must_exist = section != "output"
        if must_exist and not path.exists():
            raise InvalidConfig([FieldError(field, f"{str(value)!r} does not exist ({path})")])
        setattr(holder, key, path if isinstance(value, Path) else str(path))
    if cfg.model.base not in BASE_MODEL_PRESETS:
        path = confine(cfg.model.base, roots, "model.base", base)
        if not (path / "config.json").is_file():
            raise InvalidConfig(
                [FieldError("model.base", f"not a preset and no model folder at {path}")]
            )
        cfg.model.base = str(path)
    return cfg
