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
            "examples": [
                {
                    "name": "tiny-sft",
                    "preset": "tiny",
                    "overrides": {"stages": ["sft"], "sft.max_examples": 128},
                }
            ]
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


class JobDetail(JobSummary):
    message: str | None = Field(None, description="Latest word from Ray (or from the service).")
    updated_at: datetime
    stages_planned: list[str]
    latest_metrics: dict[str, Any] | None
    metrics_count: int
    stages: dict[str, Any] = Field(default_factory=dict, description="summary.json per stage.")
    artifacts: dict[str, Any]
    config: dict[str, Any]


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
