"""Reading every supported shape into canonical records; bad records become malformed rows, never crashes."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import DataSource
from pipelines.curate.formats import (
    MalformedRecord,
    canonical_row,
    detect_format,
    plan_chunks,
    read_chunk,
    source_name,
    to_messages,
)
from pipelines.curate.reasons import KEPT, MALFORMED
from pipelines.errors import StageError

CONVERSATION = [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}]


@pytest.mark.parametrize("record, fmt", [
    ({"instruction": "What is 3 + 4?", "input": "", "output": "7"}, "alpaca"),
    ({"conversations": [{"from": "human", "value": "What is 3 + 4?"}, {"from": "gpt", "value": "7"}]}, "sharegpt"),
    ({"messages": CONVERSATION}, "openai"),
    ({"prompt": "What is 3 + 4?", "completion": "7"}, "prompt_completion"),
])
def test_every_format_becomes_the_same_conversation(record, fmt):
    assert detect_format(record) == fmt
    assert to_messages(record) == CONVERSATION
    assert to_messages(record, fmt) == CONVERSATION


def test_alpaca_input_and_system_are_kept():
    record = {"instruction": "Sort.", "input": "3 1 2", "output": "1 2 3", "system": "Be brief."}
    assert to_messages(record) == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Sort.\n\n3 1 2"},
                                   {"role": "assistant", "content": "1 2 3"}]


def test_field_map_reads_other_shapes():
    record = {"question": "What is 3 + 4?", "answer": "7"}
    assert to_messages(record, "alpaca", {"instruction": "question", "output": "answer"}) == CONVERSATION


def test_openai_content_parts_are_joined():
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                                        {"type": "text", "text": "3 + 4?"}]},
                           {"role": "assistant", "content": "7"}]}
    assert to_messages(record) == CONVERSATION


@pytest.mark.parametrize("record, error", [
    ({"instruction": "x", "output": 42}, "field 'output' is int"),
    ({"prompt_text": "x", "answer_text": "y"}, "no known format"),
    ({"conversations": "human: hi"}, "expected a list of turns"),
    ({"conversations": [{"from": "human"}]}, "missing 'value'"),
    ({"messages": [{"role": "robot", "content": "beep"}]}, "unknown role 'robot'"),
    ({"messages": None}, "expected a list of turns"),
])
def test_malformed_records_name_the_problem(record, error):
    with pytest.raises(MalformedRecord, match=error):
        to_messages(record)
    row = canonical_row({"id": "r1", **record}, "src", "auto", {}, "file:1")
    assert (row["id"], row["reason"]) == ("r1", MALFORMED)
    assert error in row["detail"]


def test_ids_are_the_records_own_or_a_stable_hash():
    assert canonical_row({"id": 7, "messages": CONVERSATION}, "s", "auto", {}, "f:1")["id"] == "7"
    first = canonical_row({"messages": CONVERSATION}, "s", "auto", {}, "f:1")["id"]
    again = canonical_row({"messages": CONVERSATION}, "s", "auto", {}, "f:9")["id"]
    assert first == again and len(first) == 20


def _read_all(sources, chunk_bytes=1 << 20):
    return [row for chunk in plan_chunks(sources, chunk_bytes) for row in read_chunk(chunk)]


def test_jsonl_bad_lines_get_file_and_line_ids(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"id": "a", "messages": CONVERSATION}).encode()
    path.write_bytes(good + b"\n\n{not json\n" + b'{"id": "b", "output": "7\x9f"}\n' + b"[1, 2]\n")
    rows = _read_all([DataSource(path=str(path))])
    assert [(r["id"], r["reason"]) for r in rows] == [
        ("a", KEPT), ("mixed:3", MALFORMED), ("mixed:4", MALFORMED), ("mixed:5", MALFORMED)]
    assert "not JSON" in rows[1]["detail"] and "invalid UTF-8" in rows[2]["detail"]
    assert "expected a JSON object" in rows[3]["detail"]


def test_jsonl_chunks_keep_line_numbers(tmp_path):
    """Small chunks split the file into many ranges; every line is read once with its true number."""
    path = tmp_path / "many.jsonl"
    lines = [json.dumps({"id": f"r{i}", "messages": CONVERSATION}) if i % 7 else "oops" for i in range(1, 200)]
    path.write_text("\n".join(lines) + "\n")
    chunks = plan_chunks([DataSource(path=str(path))], chunk_bytes=500)
    assert len(chunks) > 10
    rows = [row for chunk in chunks for row in read_chunk(chunk)]
    assert len(rows) == 199
    assert [r["id"] for r in rows if r["reason"]] == [f"many:{i}" for i in range(7, 200, 7)]


def test_json_csv_parquet_and_globs(tmp_path):
    records = [{"id": f"r{i}", "prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "b.csv").write_text("id,prompt,completion\n" + "".join(
        f"{r['id']},{r['prompt']},{r['completion']}\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "c.parquet")
    for name in ("a.json", "b.csv", "c.parquet"):
        rows = _read_all([DataSource(path=str(tmp_path / name))])
        assert [r["id"] for r in rows] == [f"r{i}" for i in range(5)], name
        assert json.loads(rows[2]["messages"])[1]["content"] == "3"
    rows = _read_all([DataSource(path=str(tmp_path / "*.*"), name="all")])
    assert len(rows) == 15 and {r["source"] for r in rows} == {"all"}


def test_csv_row_with_invalid_utf8_is_quarantined_and_its_neighbours_kept(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"id,prompt,completion\n"
                     b"r1,What is 1 + 1?,2\n"
                     b"r2,What is \xff\xfe?,3\n"
                     b"r3,What is 3 + 1?,4\n")
    rows = _read_all([DataSource(path=str(path))])
    assert [(r["id"], r["reason"]) for r in rows] == [("r1", KEPT), ("mixed:3", MALFORMED), ("r3", KEPT)]
    assert rows[1]["detail"] == "invalid UTF-8 in column 'prompt'"


def test_a_source_that_cannot_be_opened_fails_naming_it(tmp_path):
    with pytest.raises(StageError, match="missing.jsonl"):
        plan_chunks([DataSource(path=str(tmp_path / "missing.jsonl"))])
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(StageError, match="unknown file type"):
        plan_chunks([DataSource(path=str(tmp_path / "data.xml"))])


def test_source_names():
    assert source_name(DataSource(path="/d/alpaca.jsonl"), 0) == "alpaca"
    assert source_name(DataSource(path="/d/*.jsonl"), 2) == "source2"
    assert source_name(DataSource(path="/d/x.jsonl", name="mine"), 0) == "mine"
    assert source_name(DataSource(path="hf://org/name"), 0) == "name"
