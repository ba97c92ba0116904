"""Evaluation judges: scorers of (prompt, response) pairs that no training stage saw.

A judge's score is "higher is better"; only its order within a prompt matters for win-rates.
Three kinds:

- TextJudge wraps an in-process text scorer (instructray.data.judges.SentimentJudge,
  VaderJudge) and scores the response alone;
- FunctionJudge imports a user function from "package.module:function";
- HTTPJudge POSTs batches to a scoring service (an LLM judge behind an API, a human-label
  lookup), so heavy judges run outside the training job.

Every judge's output is checked (length, numeric, finite) and a bad one is reported with the
judge's name and the first bad index: a silent NaN would turn into a meaningless win-rate.
"""

from __future__ import annotations

import importlib
import numbers
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

_FUNCTION_SPEC = re.compile(
    r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$"
)
_SPEC_FORMS = (
    '"package.module:function" (a Python function fn(prompts, responses) -> list of floats) '
    'or an "http://..." / "https://..." URL of a scoring service'
)


class JudgeError(RuntimeError):
    """A judge could not be loaded or reached, or returned scores that cannot be used."""


@runtime_checkable
class EvalJudge(Protocol):
    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray: ...


def check_scores(judge: str, result: Any, expected: int, offset: int = 0) -> np.ndarray:
    """`result` as a float64 [expected] array, or a JudgeError naming the judge and first bad index.

    `offset` is added to reported indices, for results that cover one batch of a larger call.
    """
    if result is None or isinstance(result, str | bytes | dict) or np.ndim(result) != 1:
        raise JudgeError(
            f"judge {judge!r} returned {type(result).__name__} {_short(result)}; "
            f"expected a sequence of {expected} floats, one per response"
        )
    items = list(result)
    if len(items) != expected:
        raise JudgeError(
            f"judge {judge!r} returned {len(items)} scores for {expected} responses "
            f"(rows {offset}..{offset + expected - 1}); it must return exactly one per response"
        )
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise JudgeError(
                f"judge {judge!r} returned a non-numeric score at index {offset + i}: "
                f"{_short(item)} ({type(item).__name__}); scores must be int or float"
            )
    scores = np.asarray(items, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise JudgeError(
            f"judge {judge!r} returned a non-finite score at index {offset + int(bad[0])}: "
            f"{scores[bad[0]]}; scores must be finite numbers"
        )
    return scores


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_inputs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class TextJudge:
    """Scores the response text alone with any object that has ``score(texts) -> np.ndarray``."""

    def __init__(self, name: str, judge: Any, description: str = "") -> None:
        if not callable(getattr(judge, "score", None)):
            raise TypeError(
                f"TextJudge {name!r}: {type(judge).__name__} has no score(texts) method"
            )
        self.name = name
        self.judge = judge
        self.description = description

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_inputs(prompts, responses)
        return check_scores(self.name, self.judge.score(list(responses)), len(responses))


def _import_module(module: str, label: str) -> Any:
    """Import `module`, with the driver's working directory on sys.path (as `python -m` has)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise JudgeError(
                f"judge {label}: cannot import module {module!r} ({exc}). "
                f"It must be importable from the driver's working directory ({cwd}) or "
                "PYTHONPATH: put the file there, `pip install` its package, or set PYTHONPATH"
            ) from exc
        raise JudgeError(
            f"judge {label}: importing module {module!r} failed because one of its "
            f"own imports is missing ({exc}); install that package"
        ) from exc
    except Exception as exc:
        raise JudgeError(
            f"judge {label}: importing module {module!r} raised {type(exc).__name__}: {exc}"
        ) from exc


class FunctionJudge:
    """A user judge ``fn(prompts: list[str], responses: list[str]) -> sequence of floats``.

    Loaded from "package.module:function" (the attribute may be dotted, e.g. "mod:Judge.score")
    when constructed, so a typo fails before any model is trained or sampled.
    """

    def __init__(self, spec: str, name: str | None = None, description: str = "") -> None:
        match = _FUNCTION_SPEC.match(spec.strip())
        if match is None:
            raise ValueError(f"judge spec {spec!r} is not of the form {_SPEC_FORMS}")
        self.spec = spec.strip()
        self.name = name or self.spec
        self.description = description
        module_name, attr_path = match.groups()
        label = repr(self.name) if self.name == self.spec else f"{self.name!r} ({self.spec!r})"
        target: Any = _import_module(module_name, label)
        walked = module_name
        for part in attr_path.split("."):
            if not hasattr(target, part):
                raise JudgeError(
                    f"judge {label}: {walked!r} has no attribute {part!r}; "
                    f"check the name after the colon (module file: "
                    f"{getattr(sys.modules.get(module_name), '__file__', '?')})"
                )
            target = getattr(target, part)
            walked = f"{walked}.{part}"
        if not callable(target):
            raise JudgeError(
                f"judge {label}: {walked} is of type {type(target).__name__}, "
                "not a function; point the spec at fn(prompts, responses) -> list of floats"
            )
        self.fn: Callable[[list[str], list[str]], Any] = target

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_inputs(prompts, responses)
        result = self.fn(list(prompts), list(responses))
        return check_scores(self.name, result, len(responses))


class HTTPJudge:
    """A scoring service: POST {"prompts": [...], "responses": [...]} -> {"scores": [...]}.

    Requests go in batches of `batch_size` pairs with a `timeout` (seconds) each, so one slow
    judge cannot hang an evaluation forever; `headers` carries e.g. an Authorization header.
    """

    def __init__(
        self,
        url: str,
        name: str | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        headers: dict[str, str] | None = None,
        description: str = "",
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"HTTPJudge url must start with http:// or https://, got {url!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.url = url
        self.name = name or url
        self.batch_size = batch_size
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.description = description

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        import httpx

        _check_inputs(prompts, responses)
        parts = [np.zeros(0, dtype=np.float64)]
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            for start in range(0, len(responses), self.batch_size):
                stop = min(start + self.batch_size, len(responses))
                payload = {
                    "prompts": list(prompts[start:stop]),
                    "responses": list(responses[start:stop]),
                }
                parts.append(self._post(client, payload, start, stop - start))
        return np.concatenate(parts)

    def _post(
        self, client: Any, payload: dict[str, list[str]], offset: int, size: int
    ) -> np.ndarray:
        import httpx

        where = f"judge {self.name!r} at {self.url}"
        try:
            response = client.post(self.url, json=payload)
        except httpx.TimeoutException as exc:
            raise JudgeError(
                f"{where}: no answer within {self.timeout:g} s for rows {offset}..{offset + size - 1} "
                f"({type(exc).__name__}); raise the timeout or lower batch_size ({self.batch_size})"
            ) from exc
        except httpx.HTTPError as exc:
            raise JudgeError(
                f"{where}: cannot connect ({type(exc).__name__}: {exc}); is the service running "
                "and reachable from this machine?"
            ) from exc
        if not 200 <= response.status_code < 300:
            raise JudgeError(
                f"{where}: HTTP {response.status_code} for rows {offset}..{offset + size - 1}; "
                f"body: {response.text[:200]!r}"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise JudgeError(
                f"{where}: the response is not JSON ({exc}); body: {response.text[:200]!r}"
            ) from exc
        if not isinstance(body, dict) or "scores" not in body:
            raise JudgeError(
                f'{where}: expected a JSON object {{"scores": [...]}}, got {_short(body)}'
            )
        return check_scores(self.name, body["scores"], size, offset)


def load_judge(spec: str, name: str | None = None) -> EvalJudge:
    """A judge from a spec: an http(s):// URL -> HTTPJudge, "a.b:c" -> FunctionJudge.

    The judge's name defaults to the spec itself.
    """
    text = spec.strip()
    if text.startswith(("http://", "https://")):
        return HTTPJudge(text, name=name or spec)
    if _FUNCTION_SPEC.match(text):
        return FunctionJudge(text, name=name or spec)
    raise ValueError(f"cannot load judge {spec!r}: expected {_SPEC_FORMS}")
