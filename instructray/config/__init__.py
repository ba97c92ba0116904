"""The one typed configuration of an instructray job, loaded from YAML.

Every section is a pydantic model with ``extra="forbid"`` so a typo in a key is an error that
names the key, never a silently ignored setting; cross-field checks refuse at load time what
could only fail once actors are running. `sections` holds the shared sections, `stages` one
section per stage, `job` the whole job, `loading` the YAML/``--set`` loader.
"""

from instructray.config.job import STAGE_ORDER, JobConfig, Stage
from instructray.config.loading import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
    set_dotted,
    validation_problems,
)
from instructray.config.paths import (
    MODEL_PRESETS,
    PathField,
    PathFieldInfo,
    PathKind,
    get_path,
    path_fields,
    set_path,
)
from instructray.config.sections import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    RayConfig,
    ResourcesConfig,
    RoleResources,
    RolloutConfig,
    SamplingConfig,
    Section,
)
from instructray.config.stages import (
    DPOStageConfig,
    EvalConfig,
    KLConfig,
    LabelerConfig,
    LMStageConfig,
    MonitorConfig,
    PPOStageConfig,
    RMStageConfig,
)

__all__ = [
    "MODEL_PRESETS",
    "STAGE_ORDER",
    "ConfigError",
    "DPOStageConfig",
    "DataConfig",
    "EvalConfig",
    "JobConfig",
    "KLConfig",
    "LMStageConfig",
    "LabelerConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "OutputConfig",
    "PPOStageConfig",
    "PathField",
    "PathFieldInfo",
    "PathKind",
    "RMStageConfig",
    "RayConfig",
    "ResourcesConfig",
    "RoleResources",
    "RolloutConfig",
    "SamplingConfig",
    "Section",
    "Stage",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "get_path",
    "load_config",
    "parse_override",
    "path_fields",
    "set_dotted",
    "set_path",
    "validation_problems",
]
