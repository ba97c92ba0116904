"""Data for instructray: records, user-data readers, the Rotten Tomatoes task, the labeler."""

from instructray.data.jsonl import (
    DataFormatError,
    read_preferences,
    read_prompts,
    read_sft,
    read_texts,
    write_jsonl,
    write_preferences,
)
from instructray.data.judges import Judge, SentimentJudge, VaderJudge
from instructray.data.labeler import SimulatedLabeler, agreement
from instructray.data.records import (
    PreferencePair,
    PromptExample,
    RankedComparison,
    SFTExample,
    TextExample,
)
from instructray.data.rotten_tomatoes import Review, RottenTomatoesTask, load_corpus

__all__ = [
    "DataFormatError",
    "Judge",
    "PreferencePair",
    "PromptExample",
    "RankedComparison",
    "Review",
    "RottenTomatoesTask",
    "SFTExample",
    "SentimentJudge",
    "SimulatedLabeler",
    "TextExample",
    "VaderJudge",
    "agreement",
    "load_corpus",
    "read_preferences",
    "read_prompts",
    "read_sft",
    "read_texts",
    "write_jsonl",
    "write_preferences",
]
