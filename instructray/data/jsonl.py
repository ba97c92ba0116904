"""Readers and writers for user data in JSONL (optionally gzip-compressed, by ``.gz`` suffix).

Every malformed line raises :class:`DataFormatError` naming the file, the 1-based line, what is
wrong and which record shape was expected. Blank lines are skipped; unknown extra keys are
allowed, but a known key with the wrong type is an error. Required strings must be non-empty.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from instructray.data.records import PromptExample, RankedComparison, SFTExample, TextExample

PathLike = str | os.PathLike[str]
T = TypeVar("T")

HH_TURN = "\n\nAssistant:"
_HH_HUMAN = "\n\nHuman:"
_HH_TURN_SHOWN = '"\\n\\nAssistant:"'

EXPECTED_SFT = '{"prompt","response"}'
EXPECTED_PREFERENCES = (
    '{"prompt","chosen","rejected"} or {"prompt","ranked":[best..worst]}'
    ' or HH-RLHF {"chosen","rejected"} dialogues'
)
EXPECTED_HH = (
    'HH-RLHF {"chosen","rejected"} dialogues "\\n\\nHuman: ...\\n\\nAssistant: ..." that are'
    f" identical up to the final {_HH_TURN_SHOWN}"
)
EXPECTED_PROMPTS = '{"prompt"}'
EXPECTED_TEXTS = '{"text"}'


class DataFormatError(ValueError):
    """A malformed record in a user data file, located by path and 1-based line number."""

    def __init__(self, path: PathLike, line: int, reason: str, expected: str | None = None):
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        self.expected = expected
        message = f"{self.path} line {line}: {reason}"
        if expected:
            message += f" — expected {expected}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling re-calls __init__ with the message alone; Ray ships exceptions
        # between processes, so keep the structured fields.
        return (type(self), (self.path, self.line, self.reason, self.expected))


class _Line:
    """One parsed JSON object plus what is needed to report errors about it."""

    def __init__(self, path: PathLike, number: int, obj: dict[str, Any], expected: str):
        self.path = path
        self.number = number
        self.obj = obj
        self.expected = expected

    def error(self, reason: str, expected: str | None = None) -> DataFormatError:
        return DataFormatError(self.path, self.number, reason, expected or self.expected)

    def string(self, key: str) -> str:
        if key not in self.obj:
            raise self.error(f'missing field "{key}"')
        value = self.obj[key]
        if not isinstance(value, str):
            raise self.error(f'field "{key}" must be a string, got {_type_name(value)}')
        if not value:
            raise self.error(f'field "{key}" must be a non-empty string')
        return value


def _type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _raw_lines(path: PathLike) -> Iterator[tuple[int, bytes]]:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "data file not found", os.fspath(path))
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rb") as handle:
        number = 0
        while True:
            try:
                raw = handle.readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise DataFormatError(path, number + 1, f"cannot decompress: {exc}") from exc
            if not raw:
                return
            number += 1
            yield number, raw


def _parse(path: PathLike, expected: str) -> Iterator[_Line]:
    for number, raw in _raw_lines(path):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, number, f"not valid UTF-8 ({exc.reason})") from exc
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            reason = f"invalid JSON: {exc.msg} at column {exc.colno}"
            raise DataFormatError(path, number, reason, "one JSON object per line") from exc
        if not isinstance(obj, dict):
            raise DataFormatError(
                path, number, f"a line must be a JSON object, got {_type_name(obj)}", expected
            )
        yield _Line(path, number, obj, expected)


def _read(path: PathLike, expected: str, convert: Callable[[_Line], T]) -> list[T]:
    return [convert(line) for line in _parse(path, expected)]


def read_sft(path: PathLike) -> list[SFTExample]:
    """Demonstrations, one ``{"prompt","response"}`` object per line."""
    return _read(
        path, EXPECTED_SFT, lambda ln: SFTExample(ln.string("prompt"), ln.string("response"))
    )


def read_prompts(path: PathLike) -> list[PromptExample]:
    """RL prompts, one ``{"prompt"}`` object per line."""
    return _read(path, EXPECTED_PROMPTS, lambda ln: PromptExample(ln.string("prompt")))


def read_texts(path: PathLike) -> list[TextExample]:
    """Pretraining-mix texts, one ``{"text"}`` object per line."""
    return _read(path, EXPECTED_TEXTS, lambda ln: TextExample(ln.string("text")))


def read_preferences(path: PathLike, max_chars: int | None = None) -> list[RankedComparison]:
    """Comparisons in any of three per-line shapes (they may be mixed in one file).

    ``{"prompt","chosen","rejected"}``, ``{"prompt","ranked":[best..worst]}``, or Anthropic
    HH-RLHF ``{"chosen","rejected"}`` full dialogues, split at the last shared
    ``"\\n\\nAssistant:"`` into prompt and answers.

    ``max_chars`` truncates prompts from the left (keeping the end of the dialogue, next to
    the answer) and answers from the right. A comparison whose answers become identical by
    truncation carries no preference, so it is dropped (answers that collapse onto a better
    ranked one are removed; fewer than 2 left drops the line).
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer or None, got {max_chars}")
    out: list[RankedComparison] = []
    for line in _parse(path, EXPECTED_PREFERENCES):
        prompt, answers = _preference(line)
        if max_chars is not None:
            prompt = prompt[-max_chars:]
            answers = list(dict.fromkeys(a[:max_chars] for a in answers))
            if len(answers) < 2:
                continue
        out.append(RankedComparison(prompt, tuple(answers)))
    return out


def _preference(line: _Line) -> tuple[str, list[str]]:
    obj = line.obj
    has_pair = "chosen" in obj or "rejected" in obj
    if "ranked" in obj:
        if has_pair:
            raise line.error('give either "ranked" or "chosen"/"rejected", not both')
        return line.string("prompt"), _ranked(line)
    if not has_pair:
        raise line.error('missing field "chosen"/"rejected" or "ranked"')
    chosen, rejected = line.string("chosen"), line.string("rejected")
    if chosen == rejected:
        raise line.error('fields "chosen" and "rejected" are identical')
    if "prompt" in obj:
        return line.string("prompt"), [chosen, rejected]
    return _split_hh(line, chosen, rejected)


def _ranked(line: _Line) -> list[str]:
    value = line.obj["ranked"]
    if not isinstance(value, list):
        raise line.error(f'field "ranked" must be a list of strings, got {_type_name(value)}')
    if len(value) < 2:
        noun = "item" if len(value) == 1 else "items"
        raise line.error(
            f'field "ranked" must be a list of at least 2 strings, got {len(value)} {noun}'
        )
    seen: dict[str, int] = {}
    for i, answer in enumerate(value, start=1):
        if not isinstance(answer, str):
            raise line.error(f'field "ranked" item {i} must be a string, got {_type_name(answer)}')
        if not answer:
            raise line.error(f'field "ranked" item {i} must be a non-empty string')
        if answer in seen:
            raise line.error(f'field "ranked" items {seen[answer]} and {i} are identical')
        seen[answer] = i
    return list(value)


def _split_hh(line: _Line, chosen: str, rejected: str) -> tuple[str, list[str]]:
    for key, dialogue in (("chosen", chosen), ("rejected", rejected)):
        if HH_TURN not in dialogue:
            raise line.error(
                f'field "{key}" is not an HH-RLHF dialogue: no {_HH_TURN_SHOWN} turn', EXPECTED_HH
            )
    shared = chosen[: _common_prefix_len(chosen, rejected)]
    # The last assistant turn of the *shared* part: an answer may itself contain the marker
    # (a handful of real HH-RLHF rows do), which would misplace a per-dialogue rfind.
    turn = shared.rfind(HH_TURN)
    cut = turn + len(HH_TURN)
    answers = [chosen[cut:], rejected[cut:]]
    if turn < 0 or any(_HH_HUMAN in a for a in answers):
        raise line.error(
            f'fields "chosen" and "rejected" differ before their final {_HH_TURN_SHOWN} turn'
            f" (first difference at character {len(shared)})",
            EXPECTED_HH,
        )
    if not all(answers):
        raise line.error(f"an answer after the final {_HH_TURN_SHOWN} is empty", EXPECTED_HH)
    return chosen[:cut], answers


def _common_prefix_len(a: str, b: str) -> int:
    # Binary search on slice equality: the comparisons run in C, dialogues are kilobytes long.
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def write_jsonl(path: PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line (gzip if the name ends in ``.gz``); returns the count.

    Written to a temporary sibling and renamed, so a crash never leaves a half file behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    count = 0
    try:
        opener = gzip.open if target.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def write_preferences(path: PathLike, comparisons: Iterable[RankedComparison]) -> int:
    """Save comparisons as ``{"prompt","ranked":[best..worst]}`` lines; returns the count."""
    return write_jsonl(path, ({"prompt": c.prompt, "ranked": list(c.ranked)} for c in comparisons))
