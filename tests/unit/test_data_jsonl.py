"""User-data readers: exact error locations and messages, round trips, gzip, HH-RLHF."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest

from instructray.data import (
    DataFormatError,
    PromptExample,
    RankedComparison,
    SFTExample,
    TextExample,
    read_preferences,
    read_prompts,
    read_sft,
    read_texts,
    write_jsonl,
    write_preferences,
)
from instructray.data.jsonl import EXPECTED_HH, EXPECTED_PREFERENCES, EXPECTED_SFT

HH_FILE = Path("/work/shared/data/hh_rlhf_harmless_test.jsonl.gz")
GOOD_PAIR = '{"prompt": "p", "chosen": "good", "rejected": "bad"}'
PREFS_TAIL = (
    ' — expected {"prompt","chosen","rejected"} or {"prompt","ranked":[best..worst]}'
    ' or HH-RLHF {"chosen","rejected"} dialogues'
)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _error(reader, path: Path) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        reader(path)
    assert info.value.path == str(path)
    return info.value


# --- malformed files ------------------------------------------------------------------


def test_bad_json_names_line_counting_blank_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "sft.jsonl",
        [GOOD_PAIR.replace("chosen", "response"), "", '{"prompt": "a" "response": "b"}'],
    )
    err = _error(read_sft, path)
    assert err.line == 3
    assert str(err) == (
        f"{path} line 3: invalid JSON: Expecting ',' delimiter at column 16"
        " — expected one JSON object per line"
    )


def test_missing_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "sft.jsonl", ['{"prompt": "a", "response": "b"}', '{"prompt": "a"}'])
    err = _error(read_sft, path)
    assert (err.line, err.reason, err.expected) == (2, 'missing field "response"', EXPECTED_SFT)
    assert str(err) == f'{path} line 2: missing field "response" — expected {{"prompt","response"}}'


def test_wrong_type_of_known_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", ['{"prompt": 7}'])
    err = _error(read_prompts, path)
    assert (err.line, err.reason) == (1, 'field "prompt" must be a string, got int')
    path = _write(tmp_path / "t.jsonl", ['{"text": "ok"}', '{"text": ["x"]}'])
    err = _error(read_texts, path)
    assert (err.line, err.reason) == (2, 'field "text" must be a string, got array')


def test_empty_string_and_non_object(tmp_path: Path) -> None:
    path = _write(tmp_path / "sft.jsonl", ['{"prompt": "a", "response": ""}'])
    assert _error(read_sft, path).reason == 'field "response" must be a non-empty string'
    path = _write(tmp_path / "t.jsonl", ['["text"]'])
    assert _error(read_texts, path).reason == "a line must be a JSON object, got array"


def test_one_item_ranking_message(tmp_path: Path) -> None:
    path = _write(tmp_path / "prefs.jsonl", [GOOD_PAIR] * 16 + ['{"prompt": "p", "ranked": ["a"]}'])
    err = _error(read_preferences, path)
    assert err.line == 17
    assert err.expected == EXPECTED_PREFERENCES
    assert str(err) == (
        f'{path} line 17: field "ranked" must be a list of at least 2 strings, got 1 item'
        + PREFS_TAIL
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"prompt": "p", "ranked": "a"}', 'field "ranked" must be a list of strings, got string'),
        ('{"prompt": "p", "ranked": ["a", 2]}', 'field "ranked" item 2 must be a string, got int'),
        (
            '{"prompt": "p", "ranked": ["a", "b", "a"]}',
            'field "ranked" items 1 and 3 are identical',
        ),
        ('{"ranked": ["a", "b"]}', 'missing field "prompt"'),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "a"}',
            'fields "chosen" and "rejected" are identical',
        ),
        ('{"prompt": "p", "chosen": "a"}', 'missing field "rejected"'),
        (
            '{"prompt": "p", "chosen": "a", "rejected": null}',
            'field "rejected" must be a string, got null',
        ),
        ('{"prompt": "p", "answer": "a"}', 'missing field "chosen"/"rejected" or "ranked"'),
        (
            '{"prompt": "p", "ranked": ["a", "b"], "chosen": "a", "rejected": "b"}',
            'give either "ranked" or "chosen"/"rejected", not both',
        ),
    ],
)
def test_preference_errors(tmp_path: Path, line: str, reason: str) -> None:
    path = _write(tmp_path / "prefs.jsonl", [GOOD_PAIR, line])
    err = _error(read_preferences, path)
    assert (err.line, err.reason) == (2, reason)
    assert str(err) == f"{path} line 2: {reason}{PREFS_TAIL}"


def _hh(*turns: str) -> str:
    return "".join(
        f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns)
    )


def test_hh_prefixes_differ(tmp_path: Path) -> None:
    chosen = _hh("hi", "hello", "how are you?", "fine")
    rejected = _hh("hi", "go away", "how are you?", "bad")
    path = _write(tmp_path / "hh.jsonl", [json.dumps({"chosen": chosen, "rejected": rejected})])
    err = _error(read_preferences, path)
    assert err.line == 1
    assert err.expected == EXPECTED_HH
    assert err.reason == (
        'fields "chosen" and "rejected" differ before their final "\\n\\nAssistant:" turn'
        " (first difference at character 24)"
    )
    no_turn = json.dumps({"chosen": "\n\nHuman: hi", "rejected": _hh("hi", "x")})
    err = _error(read_preferences, _write(tmp_path / "hh2.jsonl", [no_turn]))
    assert err.reason == 'field "chosen" is not an HH-RLHF dialogue: no "\\n\\nAssistant:" turn'


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "prefs.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        read_preferences(path)
    assert info.value.filename == str(path)
    assert str(info.value) == f"[Errno 2] data file not found: '{path}'"


def test_invalid_utf8_and_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    err = _error(read_texts, path)
    assert (err.line, err.reason) == (2, "not valid UTF-8 (invalid start byte)")
    gz = tmp_path / "t.jsonl.gz"
    write_jsonl(gz, ({"text": f"row {i} " * 20} for i in range(2000)))
    gz.write_bytes(gz.read_bytes()[:-40])
    err = _error(read_texts, gz)
    assert err.reason.startswith("cannot decompress:")


def test_error_survives_pickling(tmp_path: Path) -> None:
    err = DataFormatError(tmp_path / "x.jsonl", 4, 'missing field "text"', '{"text"}')
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.line, copy.reason, str(copy)) == (err.path, 4, err.reason, str(err))


# --- good files -----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_round_trips(tmp_path: Path, suffix: str) -> None:
    sft = [SFTExample("The film", " is great."), SFTExample("Ünïcode ✓", " fine")]
    write_jsonl(
        tmp_path / f"sft{suffix}",
        [{"prompt": e.prompt, "response": e.response, "id": 1} for e in sft],
    )
    assert read_sft(tmp_path / f"sft{suffix}") == sft

    prompts = [PromptExample("a"), PromptExample("b c")]
    assert write_jsonl(tmp_path / f"p{suffix}", [{"prompt": p.prompt} for p in prompts]) == 2
    assert read_prompts(tmp_path / f"p{suffix}") == prompts

    texts = [TextExample("x\ny")]
    write_jsonl(tmp_path / f"t{suffix}", [{"text": "x\ny"}])
    assert read_texts(tmp_path / f"t{suffix}") == texts

    prefs = [RankedComparison("p", ("a", "b", "c", "d")), RankedComparison("q", ("x", "y"))]
    assert write_preferences(tmp_path / f"prefs{suffix}", prefs) == 2
    assert read_preferences(tmp_path / f"prefs{suffix}") == prefs
    if suffix.endswith(".gz"):
        with gzip.open(tmp_path / f"prefs{suffix}", "rt") as handle:
            assert json.loads(handle.readline()) == {"prompt": "p", "ranked": ["a", "b", "c", "d"]}


def test_mixed_preference_formats(tmp_path: Path) -> None:
    chosen = _hh("hi", "hello", "how are you?", "fine, thanks")
    rejected = _hh("hi", "hello", "how are you?", "why do you care")
    lines = [
        GOOD_PAIR,
        "",
        '{"prompt": "q", "ranked": ["1", "2", "3"], "source": "team-a"}',
        json.dumps({"chosen": chosen, "rejected": rejected}),
    ]
    got = read_preferences(_write(tmp_path / "prefs.jsonl", lines))
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    assert got == [
        RankedComparison("p", ("good", "bad")),
        RankedComparison("q", ("1", "2", "3")),
        RankedComparison(prompt, (" fine, thanks", " why do you care")),
    ]


def test_hh_answer_containing_the_marker_splits_at_shared_turn(tmp_path: Path) -> None:
    # As in a few real HH-RLHF rows: the chosen answer itself contains "\n\nAssistant:".
    chosen = _hh("q", "a1\n\nAssistant: a2")
    rejected = _hh("q", "b")
    got = read_preferences(
        _write(tmp_path / "hh.jsonl", [json.dumps({"chosen": chosen, "rejected": rejected})])
    )
    assert got == [RankedComparison("\n\nHuman: q\n\nAssistant:", (" a1\n\nAssistant: a2", " b"))]


def test_max_chars_truncates_prompt_left_answers_right(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "0123456789", "ranked": ["abcdefgh", "abcdXYZ", "zz"]}',
        '{"prompt": "p", "chosen": "same-start-1", "rejected": "same-start-2"}',
    ]
    got = read_preferences(_write(tmp_path / "prefs.jsonl", lines), max_chars=4)
    # "abcdXYZ" collapses onto the better "abcd"; the second line collapses entirely.
    assert got == [RankedComparison("6789", ("abcd", "zz"))]
    with pytest.raises(ValueError, match="max_chars"):
        read_preferences(tmp_path / "prefs.jsonl", max_chars=0)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes('\ufeff{"prompt": "a"}\n'.encode())
    assert read_prompts(path) == [PromptExample("a")]


def test_ranked_comparison_pairs() -> None:
    comparison = RankedComparison("p", ("a", "b", "c", "d"))
    assert list(comparison.pairs()) == [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "c"),
        ("b", "d"),
        ("c", "d"),
    ]
    assert len(list(RankedComparison("p", ("a", "b")).pairs())) == 1
    with pytest.raises(ValueError, match="at least 2"):
        RankedComparison("p", ("a",))


@pytest.mark.skipif(not HH_FILE.exists(), reason=f"{HH_FILE} not present")
def test_real_hh_rlhf_file() -> None:
    comparisons = read_preferences(HH_FILE)
    assert len(comparisons) == 2312
    assert all(c.prompt.startswith("\n\nHuman:") for c in comparisons)
    assert all(c.prompt.endswith("\n\nAssistant:") for c in comparisons)
    assert all(len(c.ranked) == 2 and c.ranked[0] != c.ranked[1] for c in comparisons)
    short = read_preferences(HH_FILE, max_chars=256)
    assert len(short) == 2312
    assert max(len(c.prompt) for c in short) == 256
    assert max(len(a) for c in short for a in c.ranked) == 256
