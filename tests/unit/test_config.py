"""Tests for instructray.config: defaults, YAML loading, --set overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructray.config import (
    STAGE_ORDER,
    ConfigError,
    JobConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


def _error(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# -- defaults and the shipped config -----------------------------------------------------------


def test_defaults_validate():
    cfg = load_config(None)
    assert cfg == JobConfig()
    assert cfg.stages == ["pretrain", "sft", "rm", "ppo"]
    assert cfg.data.task == "rotten_tomatoes"
    assert cfg.ppo.clip_eps == 0.2
    assert cfg.ppo.policy_optim.lr == 2e-5
    assert cfg.rm.optim.lr == 5e-5
    assert cfg.rm.labeler.k_min == 4
    assert cfg.output.run_dir == Path("runs/latest")


def test_tiny_yaml_loads():
    cfg = load_config(TINY)
    assert cfg.name == "tiny"
    assert cfg.stages == ["pretrain", "sft", "rm", "ppo", "dpo", "eval"]
    assert cfg.model.max_prompt_tokens == 16
    assert cfg.model.max_seq_len == 64
    assert cfg.pretrain.batch_size == 64
    assert cfg.pretrain.optim.lr == 2.0e-3
    assert cfg.pretrain.optim.warmup_steps == 10
    assert cfg.ppo.iterations == 20
    assert cfg.ppo.ptx_coef == 0.05
    assert cfg.ppo.kl.estimator == "k1"
    assert cfg.dpo.max_pairs == 2048
    assert cfg.resources.reference.num_cpus == 0.25
    assert cfg.output.run_dir == Path("runs/tiny")
    # A key the file does not set keeps its default.
    assert cfg.ppo.clip_eps == 0.2


def test_load_config_accepts_str_path():
    assert load_config(str(TINY)) == load_config(TINY)


# -- --set overrides --------------------------------------------------------------------------


def test_set_nested_keys_and_yaml_typed_values():
    cfg = load_config(
        TINY,
        [
            "ppo.iterations=3",
            "ppo.clip_eps=0.3",
            "ppo.kl.adaptive=true",
            "ppo.kl.estimator=k3",
            "stages=[sft, dpo]",
            "data.preferences=prefs.jsonl",
            "rm.labeler.k_max=12",
            "ppo.value_clip_eps=null",
            "name=my-run",
        ],
    )
    assert cfg.ppo.iterations == 3
    assert cfg.ppo.clip_eps == 0.3
    assert cfg.ppo.kl.adaptive is True
    assert cfg.ppo.kl.estimator == "k3"
    assert cfg.stages == ["sft", "dpo"]
    assert cfg.data.preferences == Path("prefs.jsonl")
    assert cfg.rm.labeler.k_max == 12
    assert cfg.ppo.value_clip_eps is None
    assert cfg.name == "my-run"
    # Siblings of an overridden key keep the file's values.
    assert cfg.ppo.kl.init_coef == 0.05
    assert cfg.rm.labeler.k_min == 4


def test_set_creates_missing_sections():
    cfg = load_config(None, ["ppo.kl.target=3.5"])
    assert cfg.ppo.kl.target == 3.5
    assert cfg.ppo.kl.horizon == 10000


def test_later_override_wins():
    assert load_config(None, ["seed=1", "seed=7"]).seed == 7


def test_parse_override_values():
    assert parse_override("a.b.c=5") == (["a", "b", "c"], 5)
    assert parse_override("x=1.5e-3") == (["x"], 1.5e-3)
    assert parse_override("x=false") == (["x"], False)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    assert parse_override("x={a: 1}") == (["x"], {"a": 1})
    assert parse_override("x=hello") == (["x"], "hello")
    assert parse_override("x=a=b") == (["x"], "a=b")
    assert parse_override(" x =") == (["x"], None)


@pytest.mark.parametrize("item", ["foo", "=5", " =5"])
def test_set_without_key_value_is_an_error(item):
    with pytest.raises(ConfigError, match="expected KEY=VALUE") as info:
        parse_override(item)
    assert repr(item) in str(info.value)
    msg = _error([item])
    assert f"--set {item!r}: expected KEY=VALUE" in msg


def test_set_key_under_a_scalar_is_an_error():
    msg = _error(["seed.x=1"], TINY)
    assert msg == "--set 'seed.x=1': seed is a value, not a section"
    # A scalar set by an earlier --set counts too.
    msg = _error(["name=a", "name.b.c=1"])
    assert msg == "--set 'name.b.c=1': name is a value, not a section"
    msg = _error(["ppo.kl.estimator.deep.er=1"], TINY)
    assert msg == "--set 'ppo.kl.estimator.deep.er=1': ppo.kl.estimator is a value, not a section"


def test_apply_overrides_edits_in_place():
    data = {"ppo": {"iterations": 1}}
    out = apply_overrides(data, ["ppo.iterations=4", "ppo.kl.init_coef=0.2"])
    assert out is data
    assert data == {"ppo": {"iterations": 4, "kl": {"init_coef": 0.2}}}


# -- validation messages ----------------------------------------------------------------------


def test_unknown_key_names_dotted_path():
    msg = _error(["ppo.bogus=1"])
    assert "ppo.bogus: unknown key" in msg
    assert "<defaults>" in msg
    msg = _error(["rm.labeler.nosie=0.1"], TINY)
    assert f"{TINY}: rm.labeler.nosie: unknown key" in msg
    msg = _error(["typo=1"])
    assert "typo: unknown key" in msg


def test_unknown_key_from_yaml_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("ppo:\n  iterations: 2\n  clipp_eps: 0.1\n")
    msg = _error([], path)
    assert f"{path}: ppo.clipp_eps: unknown key" in msg


def test_out_of_range_names_field_and_value():
    msg = _error(["ppo.clip_eps=-1"])
    assert msg.startswith("invalid configuration (1 problem(s)):")
    assert "ppo.clip_eps: Input should be greater than 0 (got -1)" in msg


def test_custom_resources_of_a_role_are_named_and_positive():
    cfg = load_config(None, ["resources.rollout.resources={node_b: 1}"])
    assert (
        cfg.resources.rollout.resources == {"node_b": 1.0} and cfg.resources.policy.resources == {}
    )
    assert "must not be empty" in _error(['resources.rollout.resources={"": 1}'])
    assert "set num_cpus / num_gpus" in _error(["resources.rollout.resources={CPU: 1}"])
    msg = _error(["resources.rollout.resources={node_b: 0}"])
    assert "resources.rollout.resources.node_b: Input should be greater than 0 (got 0)" in msg


def test_wrong_type_names_field_and_value():
    msg = _error(["ppo.iterations=abc"])
    assert "ppo.iterations:" in msg
    assert "(got 'abc')" in msg
    msg = _error(["model.dtype=float16"])
    assert "model.dtype:" in msg
    assert "(got 'float16')" in msg
    msg = _error(["stages=[sft, finetune]"])
    assert "stages.1:" in msg
    assert "(got 'finetune')" in msg


def test_every_problem_is_listed():
    msg = _error(["ppo.clip_eps=-1", "ppo.gamma=2", "data.eval_fraction=1"])
    assert msg.startswith("invalid configuration (3 problem(s)):")
    assert "ppo.clip_eps: Input should be greater than 0 (got -1)" in msg
    assert "ppo.gamma: Input should be less than or equal to 1 (got 2)" in msg
    assert "data.eval_fraction: Input should be less than 1 (got 1)" in msg
    assert len(msg.splitlines()) == 4


def test_config_from_dict_uses_source():
    with pytest.raises(ConfigError, match=r"my-source: seed: .*\(got 'x'\)"):
        config_from_dict({"seed": "x"}, source="my-source")


# -- cross-field checks -----------------------------------------------------------------------


def test_ppo_without_rm_needs_a_reward():
    msg = _error(["stages=[ppo]"])
    assert "stage 'ppo' needs a reward" in msg
    assert "model.reward_checkpoint" in msg and "ppo.reward_function" in msg
    cfg = load_config(None, ["stages=[ppo]", "model.reward_checkpoint=runs/x/rm"])
    assert cfg.ordered_stages() == ["ppo"]
    cfg = load_config(None, ["stages=[ppo]", "ppo.reward_function=my_pkg.rewards:score"])
    assert cfg.ppo.reward_function == "my_pkg.rewards:score"


def test_dpo_without_rm_needs_preferences():
    msg = _error(["stages=[sft, dpo]"])
    assert "stage 'dpo' needs comparisons" in msg
    assert "data.preferences" in msg
    cfg = load_config(None, ["stages=[sft, dpo]", "data.preferences=p.jsonl"])
    assert cfg.stages == ["sft", "dpo"]
    # With rm in the job the built-in task labels comparisons for dpo.
    assert load_config(None, ["stages=[rm, dpo]"]).stages == ["rm", "dpo"]


def test_sft_without_task_needs_sft_file():
    msg = _error(["data.task=null", "stages=[sft]"])
    assert "stage 'sft' needs data.sft (or data.task)" in msg
    cfg = load_config(None, ["data.task=null", "stages=[sft]", "data.sft=demos.jsonl"])
    assert cfg.data.sft == Path("demos.jsonl")


def test_rm_without_task_needs_preferences():
    msg = _error(["data.task=null", "stages=[rm]"])
    assert "stage 'rm' needs data.preferences (or data.task)" in msg


@pytest.mark.parametrize("option", ["ppo.tis_cap=2.0", "ppo.old_logprobs=engine"])
def test_engine_logprob_options_need_vllm(option):
    msg = _error(["rollout.backend=hf", option])
    name = option if "engine" in option else option.split("=")[0]
    assert f"{name} needs the engine's own log-probs: set rollout.backend to vllm" in msg
    assert load_config(None, [option]).rollout.backend == "vllm"


def test_tis_and_engine_old_logprobs_exclude_each_other():
    msg = _error(["ppo.tis_cap=2.0", "ppo.old_logprobs=engine"])
    assert "ppo.tis_cap corrects the gap between trainer and engine log-probs" in msg


def test_duplicate_stages():
    msg = _error(["stages=[sft, rm, sft]"])
    assert "stages lists a stage twice: ['sft', 'rm', 'sft']" in msg


def test_empty_stages():
    msg = _error(["stages=[]"])
    assert "stages is empty; choose from pretrain, sft, rm, ppo, dpo, eval" in msg


def test_k_min_above_k_max():
    msg = _error(["rm.labeler.k_min=10"])
    assert "rm.labeler: k_min (10) must be <= k_max (9)" in msg
    assert load_config(None, ["rm.labeler.k_min=9"]).rm.labeler.k_min == 9


def test_rollouts_must_divide_into_mini_batches():
    msg = _error(["ppo.mini_batch_size=5"])
    assert (
        "ppo: rollout_batch_size*samples_per_prompt (32) must be a multiple of mini_batch_size (5)"
    ) in msg
    msg = _error(["ppo.rollout_batch_size=6", "ppo.samples_per_prompt=3", "ppo.mini_batch_size=4"])
    assert "(18) must be a multiple of mini_batch_size (4)" in msg
    cfg = load_config(
        None, ["ppo.rollout_batch_size=6", "ppo.samples_per_prompt=4", "ppo.mini_batch_size=8"]
    )
    assert cfg.ppo.mini_batch_size == 8


@pytest.mark.parametrize(
    "given",
    [
        ["ppo", "dpo", "sft", "pretrain", "rm"],
        ["dpo", "rm"],
        ["rm", "sft"],
        ["sft"],
    ],
)
def test_ordered_stages_follow_the_pipeline(given):
    cfg = load_config(None, [f"stages=[{', '.join(given)}]"])
    assert cfg.stages == given
    assert cfg.ordered_stages() == [s for s in STAGE_ORDER if s in given]


def test_ordered_stages_exact():
    cfg = load_config(None, ["stages=[ppo, sft, rm]"])
    assert cfg.ordered_stages() == ["sft", "rm", "ppo"]


def test_validate_assignment():
    cfg = JobConfig()
    with pytest.raises(ValueError, match="greater than 0"):
        cfg.ppo.clip_eps = -1.0


# -- files ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = _error([], path)
    assert msg == f"config file not found: {path}"


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ppo: [1, 2\nrm: {\n")
    msg = _error([], path)
    assert msg.startswith(f"{path}: not valid YAML:")


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- sft\n- rm\n")
    msg = _error([], path)
    assert msg == f"{path}: top level must be a mapping of sections, got list"


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(path) == JobConfig()


def test_directory_instead_of_file(tmp_path):
    msg = _error([], tmp_path)
    assert str(tmp_path) in msg


def test_dump_config_round_trips(tmp_path):
    cfg = load_config(
        TINY,
        ["ppo.value_clip_eps=null", "data.preferences=some/prefs.jsonl", "model.dtype=bfloat16"],
    )
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.data.preferences == Path("some/prefs.jsonl")
    assert again.ppo.value_clip_eps is None
    assert again.model.dtype == "bfloat16"


def test_dump_config_round_trips_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    dump_config(JobConfig(), path)
    text = path.read_text()
    assert text.startswith("name: instructray\n")
    assert load_config(path) == JobConfig()
