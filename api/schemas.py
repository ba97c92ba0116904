"""Request and response bodies of the job service (they are also its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Status = Literal["queued", "pending", "running", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    """A job: a name plus exactly one source of config (inline, preset, or config_path), with
    optional dotted-key overrides applied before validation."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # `_one_source` in the schema: exactly one source given and not null (a null one is
            # as good as absent).
            "oneOf": [
                {"required": [source], "properties": {source: {"not": {"type": "null"}}}}
                for source in ("config", "preset", "config_path")
            ],
            "examples": [
                {
                    "name": "tiny-sft",
                    "preset": "tiny",
                    "overrides": {"stages": ["sft"], "sft.max_examples": 128},
                }
            ],
        },
    )

    name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Shown in listings; default the config's own name.",
    )
    config: dict[str, Any] | str | None = Field(
        None, description="A whole job config: a JSON object, or YAML text."
    )
    preset: str | None = Field(None, description="A preset: <name>.yaml of the configs root.")
    config_path: str | None = Field(
        None, description="A YAML file under the configs root or a data root (relative path)."
    )
    overrides: dict[str, Any] | str | None = Field(
        None, description='Dotted keys → values, e.g. {"ppo.iterations": 5}; or YAML text of one.'
    )

    @field_validator("config", "overrides", mode="before")
    @classmethod
    def _object_or_yaml(cls, value: Any) -> Any:
        # One clear message instead of one per member of the union.
        if value is not None and not isinstance(value, dict | str):
            raise ValueError(f"must be a JSON object or YAML text, got {type(value).__name__}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        given = [k for k in ("config", "preset", "config_path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of config, preset, config_path"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class JobSummary(BaseModel):
    id: str
    name: str
    status: Status
    source: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stage: str | None = Field(None, description="Stage of the latest logged step.")
    step: int | None = None
    cancel_requested: bool
    error: str | None = None
    attempt: int = Field(
        0, description="0: the first run on Ray; N: the Nth resume (POST /jobs/{id}/resume)."
    )


class HackingWarning(BaseModel):
    """A reward-hacking warning the PPO monitor raised (summary.json `warnings`)."""

    model_config = ConfigDict(extra="allow")

    stage: str | None = None
    step: int | None = None
    kind: str | None = Field(None, description="`token_explosion` or `proxy_up_gold_down`.")
    message: str
    detail: dict[str, Any] | None = Field(None, description="The numbers behind the message.")


class StageRestart(BaseModel):
    """An actor died and its stage started again in the same run, from its newest train state
    (summary.json `warnings` of kind `actor_died`)."""

    model_config = ConfigDict(extra="allow")

    stage: str | None = None
    step: int | None = None
    message: str


class Resume(BaseModel):
    """Where a resumed run continued (summary.json `resumes`)."""

    model_config = ConfigDict(extra="allow")

    stage: str
    after_step: int = Field(description="Steps of the stage kept (0: it started again).")
    discarded_lines: int | None = Field(
        None, description="metrics.jsonl lines past that step, moved to metrics.discarded.jsonl."
    )
    time: float | None = Field(None, description="Seconds since the epoch.")


class Verdict(BaseModel):
    """eval.json's reading of one checkpoint's win-rates vs the baseline."""

    model_config = ConfigDict(extra="allow")

    aligned: bool | None = Field(None, description="Every gold judge prefers it (CI above 0.5).")
    possible_reward_hacking: bool | None = None
    per_judge: dict[str, str] = Field(
        default_factory=dict, description='Gold judge → "better", "worse" or no difference.'
    )
    message: str | None = None


class JobDetail(JobSummary):
    message: str | None = Field(None, description="Latest word from Ray (or from the service).")
    updated_at: datetime
    stages_planned: list[str]
    latest_metrics: dict[str, Any] | None
    metrics_count: int
    stages: dict[str, Any] = Field(default_factory=dict, description="summary.json per stage.")
    artifacts: dict[str, Any]
    config: dict[str, Any]
    warnings: list[HackingWarning] = Field(
        default_factory=list, description="Reward-hacking warnings of summary.json."
    )
    ray_submission_id: str = Field(description="The Ray job of the current attempt.")
    run_status: str | None = Field(
        None,
        description="summary.json's status, as the latest attempt's driver left it: running, "
        "succeeded, failed or interrupted (stopped by a signal; resumable).",
    )
    resumes: list[Resume] = Field(default_factory=list, description="summary.json `resumes`.")
    restarts: list[StageRestart] = Field(
        default_factory=list, description="Stages restarted in-process after an actor died."
    )
    evaluation: dict[str, Verdict] | None = Field(
        None, description="eval.json's verdict per checkpoint; null until the job has one."
    )
    links: dict[str, str] = Field(
        default_factory=dict, description="Endpoints of this job (eval, report once present)."
    )


class Interval(BaseModel):
    """A point estimate with its bootstrap confidence interval over n paired prompts."""

    model_config = ConfigDict(extra="allow")

    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None


class GainedWord(BaseModel):
    model_config = ConfigDict(extra="allow")

    word: str
    per_1000: float | None = None
    baseline_per_1000: float | None = None
    ratio: float | None = None
    count: int | None = None


class EvalSample(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str | None = None
    response: str | None = None
    length: int | float | None = None
    ended: bool | None = None
    scores: dict[str, float | None] = Field(default_factory=dict)


class CheckpointEval(BaseModel):
    """One checkpoint in eval.json; win_rate and score_diff are vs the baseline, per judge."""

    model_config = ConfigDict(extra="allow")

    path: str | None = None
    n: int | None = None
    confidence: float | None = None
    scores: dict[str, float | None] = Field(default_factory=dict)
    win_rate: dict[str, Interval] = Field(default_factory=dict)
    score_diff: dict[str, Interval] = Field(default_factory=dict)
    kl_per_sequence: float | None = None
    kl_per_token: float | None = None
    reference_logprob_per_token: float | None = None
    lm_loss: float | None = None
    length: float | None = None
    eos_fraction: float | None = None
    distinct_1: float | None = None
    distinct_2: float | None = None
    repetition: float | None = None
    top_gained_words: list[GainedWord] = Field(default_factory=list)
    samples: list[EvalSample] = Field(default_factory=list)


class Evaluation(BaseModel):
    """eval.json: every checkpoint scored by the proxy (the RM) and the gold judges on the same
    prompts, compared with the baseline, and a verdict per checkpoint."""

    model_config = ConfigDict(extra="allow")

    baseline: str | None = None
    proxy: str | None = None
    gold: list[str] = Field(default_factory=list)
    num_prompts: int | None = None
    checkpoints: dict[str, CheckpointEval] = Field(default_factory=dict)
    verdicts: dict[str, Verdict] = Field(default_factory=dict)


class JobList(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int


class MetricsPage(BaseModel):
    job_id: str
    rows: list[dict[str, Any]]
    since: int
    next: int = Field(description="Pass as ?since= to get only the rows after these.")
    status: Status


class Accepted(BaseModel):
    id: str
    status: Status
    cancel_requested: bool = False
    attempt: int = Field(0, description="0: the first run on Ray; N: the Nth resume.")
    links: dict[str, str] = Field(default_factory=dict)


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    ray: str
    ray_address: str


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)
