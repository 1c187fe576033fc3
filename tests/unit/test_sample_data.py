import json
from collections import Counter

import pytest

from pipelines.curate.reasons import (
    BAD_TURNS,
    CONTAMINATED,
    EMPTY_ANSWER,
    EXACT_DUPLICATE,
    MALFORMED,
    NEAR_DUPLICATE,
    OTHER_LANGUAGE,
    OVER_LONG,
    REFUSAL,
    REPEATED_LINES,
    REPEATED_NGRAMS,
    SHORT_ANSWER,
)
from pipelines.demo import sample_data, tasks
from pipelines.demo.sample_data import CLEAN, DEFECT_KINDS, generate, read_labels


def _turns(row: dict) -> list[tuple[str, str]]:
    if "messages" in row:
        return [(m["role"], m["content"]) for m in row["messages"]]
    if "conversations" in row:
        return [(c["from"], c["value"]) for c in row["conversations"]]
    return [("user", row["instruction"]), ("assistant", row["output"])]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = generate(tmp_path_factory.mktemp("d"), seed=0)
    labels = read_labels(paths["labels"])
    lines = {}
    for fmt in sample_data.FORMATS:
        for n, raw in enumerate(paths[fmt].read_bytes().split(b"\n")[:-1], start=1):
            lines[(f"{fmt}.jsonl", n)] = raw
    return paths, labels, lines


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (generate(tmp_path / name, seed=s) for name, s in [("a", 0), ("b", 0), ("c", 1)])
    for key in ("alpaca", "sharegpt", "openai", "eval", "labels"):
        assert a[key].read_bytes() == b[key].read_bytes()
    assert a["openai"].read_bytes() != c["openai"].read_bytes()


def test_every_line_is_labelled_once(data):
    paths, labels, lines = data
    assert {(lab["file"], lab["line"]) for lab in labels} == set(lines)
    assert len({lab["id"] for lab in labels}) == len(labels)
    kinds = Counter(lab["kind"] for lab in labels)
    assert kinds[CLEAN] == 2000
    assert set(kinds) == {CLEAN, *DEFECT_KINDS}
    assert min(kinds[k] for k in DEFECT_KINDS) >= 15


def _parsed(data, kind):
    _, labels, lines = data
    return [(lab, json.loads(lines[(lab["file"], lab["line"])])) for lab in labels if lab["kind"] == kind]


def test_clean_rows_are_well_formed_and_unique(data):
    rows = _parsed(data, CLEAN)
    texts = [json.dumps(_turns(row)) for _, row in rows]
    assert len(set(texts)) == len(texts)
    for lab, row in rows:
        turns = _turns(row)
        assert row["id"] == lab["id"]
        assert all(text.strip() for _, text in turns)


def test_eval_items_never_appear_in_clean_rows(data):
    paths, _, _ = data
    eval_questions = {json.loads(line)["messages"][0]["content"] for line in paths["eval"].read_text().splitlines()}
    assert len(eval_questions) == 200
    for _, row in _parsed(data, CLEAN):
        for role, text in _turns(row):
            if role in ("user", "human"):
                assert not any(text.endswith(q) for q in eval_questions), text


def test_labels_match_what_was_planted(data):
    paths, labels, lines = data
    by_id = {lab["id"]: lab for lab in labels}
    eval_rows = [json.loads(line) for line in paths["eval"].read_text().splitlines()]
    eval_pairs = {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in eval_rows}
    originals = {lab["id"]: json.loads(lines[(lab["file"], lab["line"])]) for lab in labels if lab["kind"] == CLEAN}

    for lab, row in _parsed(data, EXACT_DUPLICATE):
        assert _turns(row) == _turns(originals[lab["group"]]) or [t for _, t in _turns(row)] == [
            t for _, t in _turns(originals[lab["group"]])]
        assert lab["group"] < lab["id"], "the original is the smallest id of its group"
    for lab, row in _parsed(data, NEAR_DUPLICATE):
        orig = [t for _, t in _turns(originals[lab["group"]])]
        near = [t for _, t in _turns(row)]
        assert orig != near and sum(a == b for a, b in zip(orig, near, strict=True)) == len(orig) - 1
    for _, row in _parsed(data, EMPTY_ANSWER):
        assert _turns(row)[-1][1].strip() == ""
    for _, row in _parsed(data, SHORT_ANSWER):
        prompt, answer = _turns(row)[0][1], _turns(row)[-1][1]
        assert len(answer.split()) == 1 and len(prompt.split()) > 30
    for _, row in _parsed(data, REFUSAL):
        assert "AI" in _turns(row)[-1][1] or "cannot" in _turns(row)[-1][1]
    for _, row in _parsed(data, OVER_LONG):
        assert len(_turns(row)[-1][1].split()) > 500
    for _, row in _parsed(data, CONTAMINATED):
        prompt, answer = _turns(row)[0][1], _turns(row)[-1][1]
        assert any(prompt.endswith(q) and answer == a for q, a in eval_pairs)
    for _, row in _parsed(data, REPEATED_NGRAMS):
        answer = _turns(row)[-1][1]
        assert len(set(answer.split())) * 4 < len(answer.split()) and "\n" not in answer
    for _, row in _parsed(data, REPEATED_LINES):
        answer = _turns(row)[-1][1]
        assert len(set(answer.split())) * 4 < len(answer.split())
        assert len(set(answer.splitlines())) * 4 < len(answer.splitlines())
    for _, row in _parsed(data, BAD_TURNS):
        roles = [r for r, _ in _turns(row)]
        ok = roles[:2] == ["user", "assistant"] or roles[:2] == ["human", "gpt"]
        assert not ok or not _turns(row)[0][1]
    assert all(lab["group"] in by_id for lab in labels if lab["group"])


def test_other_language_rows_are_identified_as_such(data):
    import langid

    for _, row in _parsed(data, OTHER_LANGUAGE):
        assert langid.classify(" ".join(t for _, t in _turns(row)))[0] != "en"


def test_malformed_rows_fail_to_parse_or_break_the_schema(data):
    _, labels, lines = data
    for lab in (lab for lab in labels if lab["kind"] == MALFORMED):
        raw = lines[(lab["file"], lab["line"])]
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            assert lab["id"] == f"{lab['file'].removesuffix('.jsonl')}:{lab['line']}"
            continue
        with pytest.raises((KeyError, TypeError, AssertionError, AttributeError)):
            turns = _turns(row)
            assert all(isinstance(t, str) for _, t in turns)
            assert all(r in {"user", "assistant", "system", "human", "gpt"} for r, _ in turns)


def test_skill_corpus_covers_every_fact():
    corpus = tasks.skill_corpus(0, n_lines=5000)
    text = "\n".join(corpus)
    for country, city in tasks.world(0).items():
        assert f"The capital of {country} is {city}." in text
    assert tasks.skill_corpus(0, n_lines=5000) == corpus


def test_the_pretraining_eval_set_is_the_tiny_models_corpus_as_plain_text(tmp_path):
    path = tasks.write_pretraining_eval_set(tmp_path / "pretraining.jsonl", seed=0, n=50)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["text"] for row in rows] == tasks.skill_corpus(0)[:50]
    assert all(set(row) == {"id", "text"} for row in rows)
    assert len({row["id"] for row in rows}) == 50


def test_the_narrow_set_is_one_task_with_distinct_items_none_in_the_eval_set(tmp_path):
    path = sample_data.write_narrow_task_set(tmp_path / "narrow.jsonl", seed=0, n=300)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    questions = [row["messages"][0]["content"] for row in rows]
    assert len(rows) == 300 and len(set(questions)) == 300 and len({row["id"] for row in rows}) == 300
    assert all(q.startswith("Reverse ") for q in questions)
    for row in rows:
        letters = row["messages"][0]["content"].removeprefix("Reverse ").rstrip(".").split()
        assert row["messages"][1]["content"] == " ".join(reversed(letters))
    assert not set(questions) & {task.question for task in tasks.eval_items(0)}
