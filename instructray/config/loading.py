"""Loading a job config: YAML file or embedded defaults, ``--set a.b=value`` overrides, and
pydantic's errors as `ConfigError` lines ``<source>: <field.path>: <what is wrong> (got <value>)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from instructray.config.job import JobConfig


class ConfigError(ValueError):
    """A job configuration that cannot run; the message lists every problem found."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as YAML so numbers/bools/lists work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set ppo.iterations=5")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    """``data[a][b][c] = value`` for ``path == [a, b, c]``, creating sections on the way."""
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path[: i + 1])} is a value, not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        try:
            set_dotted(data, path, value)
        except ConfigError as err:
            raise ConfigError(f"--set {item!r}: {err}") from None
    return data


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(dotted field path, what is wrong with the value given) for each pydantic error."""
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/tiny.yaml for all keys)"
        got = e.get("input")
        if not isinstance(got, dict | list) and e["type"] != "missing":
            message += f" (got {got!r})"
        problems.append((where, message))
    return problems


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid configuration ({err.error_count()} problem(s)):"]
    lines += [f"  {source}: {where}: {message}" for where, message in validation_problems(err)]
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job config (or the embedded defaults when path is None) and validate it."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        data = loaded or {}
    return config_from_dict(apply_overrides(data, overrides or []), source)


def dump_config(cfg: JobConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
