"""Evaluation judges: user functions by "module:function" and a real HTTP scoring service."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest

from instructray.evaluation.judges import (
    EvalJudge,
    FunctionJudge,
    HTTPJudge,
    JudgeError,
    TextJudge,
    load_judge,
)

HERE = "tests.unit.test_eval_judges"
PROMPTS = ["p1", "p2", "p3"]
RESPONSES = ["a", "bbb", "cc"]


# --- judge functions loaded by spec from this module ------------------------------------------


def length_judge(prompts: list[str], responses: list[str]) -> list[float]:
    assert isinstance(prompts, list) and isinstance(responses, list)
    return [float(len(r)) for r in responses]


def short_judge(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0] * (len(responses) - 1)


def nan_judge(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0, 2.0, float("nan")]


def text_judge(prompts: list[str], responses: list[str]) -> list[object]:
    return [1.0, "high", 2.0]


NOT_CALLABLE = 3


class Scorers:
    @staticmethod
    def prompt_length(prompts: list[str], responses: list[str]) -> np.ndarray:
        return np.array([len(p) for p in prompts], dtype=np.int64)


def test_function_judge_scores_and_satisfies_protocol() -> None:
    judge = load_judge(f"{HERE}:length_judge")
    assert isinstance(judge, FunctionJudge) and isinstance(judge, EvalJudge)
    assert judge.name == f"{HERE}:length_judge"
    np.testing.assert_array_equal(judge.score(PROMPTS, RESPONSES), [1.0, 3.0, 2.0])
    dotted = load_judge(f"{HERE}:Scorers.prompt_length", name="plen")
    assert dotted.name == "plen"
    np.testing.assert_array_equal(dotted.score(PROMPTS, RESPONSES), [2.0, 2.0, 2.0])


def test_function_judge_load_errors_say_what_and_how() -> None:
    with pytest.raises(JudgeError, match=r"cannot import module 'no_such_pkg\.judges'") as err:
        FunctionJudge("no_such_pkg.judges:score")
    assert "PYTHONPATH" in str(err.value) and "working directory" in str(err.value)
    with pytest.raises(JudgeError, match=r"has no attribute 'missing_fn'"):
        FunctionJudge(f"{HERE}:missing_fn")
    with pytest.raises(JudgeError, match=r"is of type int, not a function"):
        FunctionJudge(f"{HERE}:NOT_CALLABLE")


@pytest.mark.parametrize(
    ("fn", "pattern"),
    [
        ("short_judge", r"returned 2 scores for 3 responses"),
        ("nan_judge", r"non-finite score at index 2"),
        ("text_judge", r"non-numeric score at index 1: 'high'"),
    ],
)
def test_function_judge_bad_results_name_judge_and_index(fn: str, pattern: str) -> None:
    judge = FunctionJudge(f"{HERE}:{fn}", name="mine")
    with pytest.raises(JudgeError, match=pattern) as err:
        judge.score(PROMPTS, RESPONSES)
    assert "'mine'" in str(err.value)


def test_text_judge_scores_responses_only() -> None:
    class Counter:
        def score(self, texts: list[str]) -> np.ndarray:
            return np.array([t.count("b") for t in texts], dtype=float)

    judge = TextJudge("bees", Counter(), description="counts b")
    assert isinstance(judge, EvalJudge)
    np.testing.assert_array_equal(judge.score(PROMPTS, RESPONSES), [0.0, 3.0, 0.0])
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        judge.score(PROMPTS, RESPONSES[:2])
    with pytest.raises(TypeError):
        TextJudge("bad", object())


def test_load_judge_rejects_other_specs() -> None:
    for spec in ["labeler", "ftp://x", "a.b", "a:b:c", "1mod:fn"]:
        with pytest.raises(ValueError, match=r"package\.module:function.*http"):
            load_judge(spec)


# --- a real HTTP scoring service on 127.0.0.1 --------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    batches: ClassVar[list[int]] = []

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, body: str, content_type: str = "application/json") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        responses = payload["responses"]
        assert len(payload["prompts"]) == len(responses)
        _Handler.batches.append(len(responses))
        if self.path == "/score":
            self._reply(200, json.dumps({"scores": [len(r) for r in responses]}))
        elif self.path == "/fail":
            self._reply(500, "model crashed: " + "x" * 500, "text/plain")
        elif self.path == "/short":
            self._reply(200, json.dumps({"scores": [0.0] * (len(responses) - 1)}))
        elif self.path == "/notjson":
            self._reply(200, "<html>hello</html>", "text/html")
        else:
            self._reply(404, "no such route", "text/plain")


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_http_judge_scores_in_batches(server_url: str) -> None:
    prompts = [f"p{i}" for i in range(7)]
    responses = ["r" * i for i in range(7)]
    judge = load_judge(f"{server_url}/score", name="remote")
    assert isinstance(judge, HTTPJudge) and judge.name == "remote"
    judge.batch_size = 3
    _Handler.batches.clear()
    np.testing.assert_array_equal(judge.score(prompts, responses), np.arange(7.0))
    assert _Handler.batches == [3, 3, 1]
    assert judge.score([], []).shape == (0,)
    assert _Handler.batches == [3, 3, 1]  # no request for nothing


def test_http_judge_error_status_includes_status_and_body_head(server_url: str) -> None:
    with pytest.raises(JudgeError, match=r"HTTP 500 for rows 0\.\.2") as err:
        HTTPJudge(f"{server_url}/fail").score(PROMPTS, RESPONSES)
    message = str(err.value)
    assert "model crashed" in message
    assert "x" * 185 in message and "x" * 186 not in message  # first 200 chars of the body


def test_http_judge_wrong_length_and_bad_json(server_url: str) -> None:
    judge = HTTPJudge(f"{server_url}/short", batch_size=2, name="svc")
    with pytest.raises(
        JudgeError, match=r"'svc' returned 1 scores for 2 responses \(rows 0\.\.1\)"
    ):
        judge.score(PROMPTS, RESPONSES)
    with pytest.raises(JudgeError, match=r"not JSON.*<html>hello"):
        HTTPJudge(f"{server_url}/notjson").score(PROMPTS, RESPONSES)


def test_http_judge_connection_refused() -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = HTTPJudge(f"http://127.0.0.1:{port}/score", timeout=5.0)
    with pytest.raises(JudgeError, match=r"cannot connect.*is the service running"):
        judge.score(PROMPTS, RESPONSES)


def test_http_judge_rejects_non_http_url() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        HTTPJudge("127.0.0.1:8000")
