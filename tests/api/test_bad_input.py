"""Bad requests get the right 4xx with a message naming what is wrong, and change nothing: the
jobs table (read straight from the database; on PostgreSQL too for those that get nearest to a
write) and the runs folder are as before."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from instructray.api.settings import Settings
from tests.api.conftest import AUTH, both_backends, db_rows
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import REPO, wait_for

TINY = {"preset": "tiny"}


@pytest.fixture
def unchanged(client: httpx.Client, settings: Settings, fake_ray: FakeRayJobs) -> Iterator[None]:
    """One finished job first (which nothing touches any more), so "unchanged" is checked
    against a non-empty table."""
    job = client.post("/jobs", json={**TINY, "name": "baseline"}, headers=AUTH).json()["id"]
    wait_for(lambda: job in fake_ray.jobs, 10, "the submission", 0.02)
    fake_ray.set(job, "SUCCEEDED")
    wait_for(
        lambda: client.get(f"/jobs/{job}").json()["status"] == "succeeded", 10, "success", 0.02
    )
    before = db_rows(settings)
    runs_before = sorted(p.name for p in settings.runs_root.iterdir())
    yield
    assert db_rows(settings) == before
    assert sorted(p.name for p in settings.runs_root.iterdir()) == runs_before


def post(client: httpx.Client, body: object = None, *, content: bytes | None = None, **kw):
    headers = kw.pop("headers", AUTH)
    if content is not None:
        return client.post("/jobs", content=content, headers=headers, **kw)
    return client.post("/jobs", json=body, headers=headers, **kw)


def fields(r: httpx.Response) -> list[str]:
    return [e["field"] for e in r.json().get("errors", [])]


@pytest.mark.usefixtures("unchanged")
class TestRejectedSubmissions:
    def test_malformed_json_is_400(self, client: httpx.Client) -> None:
        r = post(client, content=b'{"preset": "tiny",')
        assert r.status_code == 400 and r.json()["detail"].startswith("malformed JSON body")

    @pytest.mark.parametrize("levels", [40, 900, 5000])
    def test_a_deeply_nested_body_is_422(self, client: httpx.Client, levels: int) -> None:
        body = '{"preset": "tiny", "overrides": ' + '{"a": ' * levels + "1" + "}" * levels + "}"
        r = post(
            client, content=body.encode(), headers={**AUTH, "content-type": "application/json"}
        )
        assert r.status_code == 422 and fields(r) == ["body"]
        assert "nests deeper than 32 levels" in r.json()["errors"][0]["message"]

    @pytest.mark.parametrize("levels", [40, 400])
    def test_deeply_nested_yaml_is_422(self, client: httpx.Client, levels: int) -> None:
        r = post(client, {**TINY, "overrides": "{a: " * levels + "1" + "}" * levels})
        assert r.status_code == 422 and fields(r) == ["overrides"]
        assert "YAML nests deeper than 32 levels" in r.json()["errors"][0]["message"]

    def test_body_must_be_an_object(self, client: httpx.Client) -> None:
        r = post(client, [1, 2])
        assert r.status_code == 422

    def test_unknown_request_field_is_named(self, client: httpx.Client) -> None:
        r = post(client, {**TINY, "nmae": "typo"})
        assert r.status_code == 422 and fields(r) == ["body.nmae"]
        assert "Extra inputs are not permitted" in r.json()["detail"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({**TINY, "overrides": {"sft.batch_sizee": 3}}, "sft.batch_sizee"),
            ({"config": {"ppo": {"iterashuns": 2}}}, "ppo.iterashuns"),
            ({"config": "sft:\n  optim: {lrr: 0.1}\n"}, "sft.optim.lrr"),
        ],
    )
    def test_unknown_config_key_is_named(self, client: httpx.Client, body, field) -> None:
        r = post(client, body)
        assert r.status_code == 422 and fields(r) == [field], r.text
        assert "unknown key" in r.json()["errors"][0]["message"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({**TINY, "overrides": {"sft.batch_size": "big"}}, "sft.batch_size"),
            ({**TINY, "overrides": {"ppo.kl.estimator": "k9"}}, "ppo.kl.estimator"),
            ({**TINY, "overrides": {"stages": ["sft", "finetune"]}}, "stages.1"),
            ({**TINY, "name": 5}, "body.name"),
            ({"config": [1, 2]}, "body.config"),
            ({**TINY, "overrides": {"sft": 3, "sft.lr": 1}}, "sft.lr"),
        ],
    )
    def test_wrong_types_are_named(self, client: httpx.Client, body, field) -> None:
        r = post(client, body)
        assert r.status_code == 422 and field in fields(r), r.text

    @both_backends
    def test_config_rule_violation_is_explained(self, client: httpx.Client) -> None:
        r = post(client, {**TINY, "overrides": {"stages": ["ppo"]}})
        assert r.status_code == 422 and "needs a reward" in r.json()["detail"]

    @pytest.mark.parametrize(
        "body", [{}, {"preset": "tiny", "config": {}}, {"name": "x", "overrides": {}}]
    )
    def test_exactly_one_config_source(self, client: httpx.Client, body) -> None:
        r = post(client, body)
        assert r.status_code == 422 and "exactly one of config, preset, config_path" in r.text

    def test_bad_yaml_and_yaml_aliases_are_refused(self, client: httpx.Client) -> None:
        r = post(client, {"config": "sft: [unclosed"})
        assert r.status_code == 422 and fields(r) == ["config"] and "not valid YAML" in r.text
        bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nstages: [*b, *b]\n"
        r = post(client, {"config": bomb})
        assert r.status_code == 422 and "aliases" in r.text

    def test_unknown_preset_lists_the_real_ones(self, client: httpx.Client) -> None:
        r = post(client, {"preset": "huge"})
        assert r.status_code == 422 and fields(r) == ["preset"] and "tiny" in r.text
        assert post(client, {"preset": "../tiny"}).status_code == 422

    @pytest.mark.parametrize(
        ("headers", "status", "says"),
        [
            ({}, 401, "missing bearer token"),
            ({"Authorization": "Basic dXNlcjpwdw=="}, 401, "expected 'Bearer <token>'"),
            ({"Authorization": "Bearer wrong-token"}, 403, "invalid bearer token"),
        ],
    )
    def test_token_is_required(self, client: httpx.Client, headers, status, says) -> None:
        r = post(client, TINY, headers=headers)
        assert r.status_code == status and says in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        # the token is checked before the body is even parsed
        assert post(client, content=b"{not json", headers=headers).status_code == status

    @pytest.mark.parametrize(
        "path", ["../../../../etc/passwd", "/etc/passwd", "tiny.yaml/../../../etc/hosts.yaml"]
    )
    def test_config_path_traversal_is_403(self, client: httpx.Client, path: str) -> None:
        r = post(client, {"config_path": path})
        assert r.status_code == 403 and fields(r) == ["config_path"]
        assert "outside the allowed roots" in r.json()["detail"]

    def test_symlink_out_of_an_allowed_root_is_403(
        self, client: httpx.Client, settings: Settings
    ) -> None:
        link = settings.data_roots[0] / "innocent.yaml"
        os.symlink("/etc/passwd", link)
        r = post(client, {"config_path": str(link)})
        assert r.status_code == 403 and fields(r) == ["config_path"]

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("data.sft", "/etc/passwd"),
            ("data.prompts", "../../../../../etc/shadow"),
            ("model.base", "/usr/lib"),
            ("model.sft_checkpoint", "/root"),
            ("output.cache_dir", "/root/.ssh"),
            ("data.eval_prompts", "/etc/passwd"),
            ("rollout.shm_dir", "/etc"),
            ("rm.labeler.fluency_model", "/usr/lib"),
        ],
    )
    def test_paths_inside_the_config_are_confined(self, client: httpx.Client, key, value) -> None:
        r = post(client, {**TINY, "overrides": {key: value}})
        assert r.status_code == 403 and fields(r) == [key], r.text
        assert r.json()["detail"].startswith(f"path not allowed: {key}: {value!r} is outside")

    def test_a_data_file_linking_out_of_its_root_is_403(
        self, client: httpx.Client, settings: Settings
    ) -> None:
        os.symlink("/etc/passwd", settings.data_roots[0] / "prompts.jsonl")
        r = post(client, {**TINY, "overrides": {"data.prompts": "prompts.jsonl"}})
        assert r.status_code == 403 and fields(r) == ["data.prompts"], r.text

    @both_backends
    def test_missing_data_file_under_an_allowed_root_is_422(self, client: httpx.Client) -> None:
        r = post(client, {**TINY, "overrides": {"data.sft": "nope.jsonl"}})
        assert r.status_code == 422 and fields(r) == ["data.sft"] and "does not exist" in r.text

    def test_oversized_body_is_413(self, client: httpx.Client, settings: Settings) -> None:
        big = b'{"config": "' + b"#" * (settings.max_body_bytes + 10) + b'"}'
        r = post(client, content=big)
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        chunks = iter([big[i : i + 65536] for i in range(0, len(big), 65536)])
        r = post(client, content=chunks)  # chunked: no Content-Length to check up front
        assert r.status_code == 413

    @both_backends
    def test_cancel_needs_the_token_too(self, client: httpx.Client) -> None:
        job_id = client.get("/jobs").json()["items"][0]["id"]
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 401
        r = client.post(f"/jobs/{job_id}/cancel", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403


@both_backends
def test_accepted_config_with_a_data_file_in_an_allowed_root(
    client: httpx.Client, settings: Settings
) -> None:
    data = settings.data_roots[0] / "sft.jsonl"
    data.write_text('{"prompt": "p", "response": "r"}\n')
    r = post(client, {**TINY, "overrides": {"data.sft": "sft.jsonl"}})
    assert r.status_code == 202, r.text
    config = client.get(f"/jobs/{r.json()['id']}").json()["config"]
    assert config["data"]["sft"] == str(data)  # resolved against the first data root


def test_shm_dir_in_dev_shm_is_accepted(client: httpx.Client) -> None:
    r = post(client, {**TINY, "overrides": {"rollout.shm_dir": "/dev/shm/instructray"}})
    assert r.status_code == 202, r.text
    config = client.get(f"/jobs/{r.json()['id']}").json()["config"]
    assert config["rollout"]["shm_dir"] == str(Path("/dev/shm").resolve() / "instructray")


class TestPresetLinks:
    @pytest.fixture
    def settings(self, settings: Settings, tmp_path: Path) -> Settings:
        """A configs root holding tiny.yaml and evil.yaml, a link to a file outside it."""
        root = (tmp_path / "configs").resolve()
        root.mkdir()
        shutil.copy(REPO / "configs" / "tiny.yaml", root / "tiny.yaml")
        outside = tmp_path / "outside.yaml"
        shutil.copy(REPO / "configs" / "tiny.yaml", outside)
        (root / "evil.yaml").symlink_to(outside)
        return settings.model_copy(update={"configs_root": root})

    @pytest.mark.usefixtures("unchanged")
    def test_a_preset_linking_out_of_the_configs_root_is_refused(
        self, client: httpx.Client, settings: Settings
    ) -> None:
        r = post(client, {"preset": "evil"})
        assert r.status_code == 403 and fields(r) == ["preset"], r.text
        assert r.json()["detail"] == (
            "path not allowed: preset: 'evil' is a link leading outside the presets folder "
            f"({settings.configs_root})"
        )
        assert client.get("/presets").json()["presets"] == ["tiny"]


@both_backends
@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "path",
    ["/jobs/ir-nope", "/jobs/ir-nope/metrics", "/jobs/ir-nope/logs", "/jobs/ir-nope/logs?follow=0"],
)
def test_unknown_job_is_404(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404 and r.json()["detail"] == "no job 'ir-nope'"


@both_backends
@pytest.mark.usefixtures("unchanged")
def test_cancel_unknown_job_is_404(client: httpx.Client) -> None:
    r = client.post("/jobs/ir-nope/cancel", headers=AUTH)
    assert r.status_code == 404 and "ir-nope" in r.json()["detail"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "query.limit"),
        ("limit=lots", "query.limit"),
        ("offset=-1", "query.offset"),
        ("offset=9223372036854775808", "query.offset"),
        ("status=exploded", "query.status.0"),
    ],
)
def test_bad_list_query_is_422(client: httpx.Client, query: str, field: str) -> None:
    r = client.get(f"/jobs?{query}")
    assert r.status_code == 422 and fields(r) == [field]


def test_bad_metrics_cursor_is_422(client: httpx.Client) -> None:
    job_id = post(client, TINY).json()["id"]
    r = client.get(f"/jobs/{job_id}/metrics?since=-3")
    assert r.status_code == 422 and fields(r) == ["query.since"]


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.delete("/jobs").status_code == 405


def test_data_root_is_created_relative_safe(settings: Settings) -> None:
    assert all(Path(p).is_absolute() for p in settings.allowed_data_roots)
