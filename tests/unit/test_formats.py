"""Reading every supported shape into canonical records; bad records become malformed rows, never crashes.

    .venv/bin/python -m pytest tests/unit/test_formats.py -q
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.config import DataSource
from pipelines.curate.formats import MalformedRecord, canonical_row, detect_format, to_messages
from pipelines.curate.json_items import array_items
from pipelines.curate.readers import plan_chunks, read_chunk, source_name
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
    assert (row["id"], row["user_id"], row["reason"]) == ("file:1", "r1", MALFORMED)
    assert error in row["detail"]


def test_the_key_is_where_a_row_was_read_and_the_users_id_travels_beside_it():
    """Issue 11: identical records without an id used to share a content-hash id; now each has its own key."""
    row = canonical_row({"id": 7, "messages": CONVERSATION}, "s", "auto", {}, "f:1")
    assert (row["id"], row["user_id"]) == ("f:1", "7")
    first = canonical_row({"messages": CONVERSATION}, "s", "auto", {}, "f:1")
    again = canonical_row({"messages": CONVERSATION}, "s", "auto", {}, "f:9")
    assert (first["id"], again["id"]) == ("f:1", "f:9") and first["user_id"] is again["user_id"] is None
    assert first["messages"] == again["messages"]
    assert canonical_row({"question": 3, "answer": "x"}, "s", "alpaca", {"id": "question", "instruction": "answer",
                                                                          "output": "answer"}, "f:2")["user_id"] == "3"


def _read_all(sources, chunk_bytes=1 << 20):
    return [row for chunk in plan_chunks(sources, chunk_bytes) for row in read_chunk(chunk)]


def test_jsonl_bad_lines_get_file_and_line_ids(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"id": "a", "messages": CONVERSATION}).encode()
    path.write_bytes(good + b"\n\n{not json\n" + b'{"id": "b", "output": "7\x9f"}\n' + b"[1, 2]\n")
    rows = _read_all([DataSource(path=str(path))])
    assert [(r["id"], r["user_id"], r["reason"]) for r in rows] == [
        ("mixed:1", "a", KEPT), ("mixed:3", None, MALFORMED), ("mixed:4", None, MALFORMED),
        ("mixed:5", None, MALFORMED)]
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
    assert [r["id"] for r in rows] == [f"many:{i}" for i in range(1, 200)]


def test_json_csv_parquet_and_globs(tmp_path):
    records = [{"id": f"r{i}", "prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "b.csv").write_text("id,prompt,completion\n" + "".join(
        f"{r['id']},{r['prompt']},{r['completion']}\n" for r in records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "c.parquet")
    for name in ("a.json", "b.csv", "c.parquet"):
        rows = _read_all([DataSource(path=str(tmp_path / name))])
        assert [r["user_id"] for r in rows] == [f"r{i}" for i in range(5)], name
        assert json.loads(rows[2]["messages"])[1]["content"] == "3"
    rows = _read_all([DataSource(path=str(tmp_path / "*.*"), name="all")])
    assert len(rows) == 15 and {r["source"] for r in rows} == {"all"}
    assert len({r["id"] for r in rows}) == 15 and rows[0]["id"] == "a:1" and rows[5]["id"] == "b:2"


def test_csv_row_with_invalid_utf8_is_quarantined_and_its_neighbours_kept(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"id,prompt,completion\n"
                     b"r1,What is 1 + 1?,2\n"
                     b"r2,What is \xff\xfe?,3\n"
                     b"r3,What is 3 + 1?,4\n")
    rows = _read_all([DataSource(path=str(path))])
    assert [(r["id"], r["user_id"], r["reason"]) for r in rows] == [
        ("mixed:2", "r1", KEPT), ("mixed:3", None, MALFORMED), ("mixed:4", "r3", KEPT)]
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


def test_files_that_share_a_stem_get_distinct_labels_and_keys(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data.jsonl").write_text(json.dumps({"id": 0, "messages": CONVERSATION}) + "\n")
    sources = [DataSource(path=str(tmp_path / folder / "data.jsonl")) for folder in ("a", "b")]
    rows = _read_all([*sources, sources[0]])  # the same file twice is read twice, under its own keys
    assert [r["id"] for r in rows] == ["data:1", "data-2:1", "data-3:1"]
    assert [r["user_id"] for r in rows] == ["0", "0", "0"]


# --- issue 11: one bad row is one quarantined row -----------------------------------------------------

def test_a_csv_row_with_an_unquoted_comma_is_one_malformed_row(tmp_path):
    path = tmp_path / "commas.csv"
    path.write_text("id,prompt,completion\n"
                    "r1,What is 1 + 1?,2\n"
                    "r2,What is 1, 2 or 3?,3\n"  # the comma in the prompt is not quoted: one field too many
                    '"r3","What is 1, then 3?",4\n')
    rows = _read_all([DataSource(path=str(path))])
    assert [(r["id"], r["reason"]) for r in rows] == [("commas:2", KEPT), ("commas:3", MALFORMED), ("commas:4", KEPT)]
    assert rows[1]["detail"] == "4 fields where the header has 3: quote fields that hold commas"
    assert json.loads(rows[2]["messages"])[0]["content"] == "What is 1, then 3?"


def test_a_byte_order_mark_does_not_rename_the_first_column(tmp_path):
    record = {"id": "r1", "prompt": "What is 1 + 1?", "completion": "2"}
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfid,prompt,completion\nr1,What is 1 + 1?,2\n")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode() + b"\n")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([record]).encode())
    for name in ("bom.csv", "bom.jsonl", "bom.json"):
        rows = _read_all([DataSource(path=str(tmp_path / name))])
        assert [(r["user_id"], r["reason"]) for r in rows] == [("r1", KEPT)], name


def test_a_pretty_printed_json_array_with_one_syntax_error_loses_only_that_record(tmp_path):
    records = [{"id": f"r{i}", "prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(5)]
    text = json.dumps(records, indent=2)
    broken = text.replace('"completion": "3"', '"completion": "3" "extra"')  # record r2: a missing comma
    assert broken != text
    (tmp_path / "pretty.json").write_text(broken)
    rows = _read_all([DataSource(path=str(tmp_path / "pretty.json"))])
    assert [(r["id"], r["user_id"], r["reason"]) for r in rows] == [
        ("pretty:1", "r0", KEPT), ("pretty:2", "r1", KEPT), ("pretty:3", None, MALFORMED), ("pretty:4", "r3", KEPT),
        ("pretty:5", "r4", KEPT)]
    assert "not JSON" in rows[2]["detail"]


@pytest.mark.parametrize("text, expected", [
    ('[{"a": 1}, {"b": }, {"c": 3}]', [{"a": 1}, None, {"c": 3}]),
    ('[{"a": 1} {"c": 3}]', [{"a": 1}, {"c": 3}]),  # a missing comma between records costs nothing
    ('[{"a": "unclosed\n}, {"c": 3}]', [None, {"c": 3}]),  # a broken string ends at its line
    ('[1,,2]', [1, None, 2]),
    ('[{"a": 1}, }, {"c": 3}', [{"a": 1}, None, {"c": 3}]),
    ('[{"a": [1, 2}, {"c": 3}]', [None]),  # an unbalanced bracket takes the rest of the array with it
])
def test_array_items_resume_after_a_broken_item(text, expected):
    items = list(array_items(text))
    assert [None if isinstance(item, MalformedRecord) else item for item in items] == expected


def test_json_lines_saved_as_json_are_read_line_by_line(tmp_path):
    (tmp_path / "lines.json").write_text("\n".join([json.dumps({"id": "a", "messages": CONVERSATION}), "{broken",
                                                     json.dumps({"id": "b", "messages": CONVERSATION})]) + "\n")
    rows = _read_all([DataSource(path=str(tmp_path / "lines.json"))])
    assert [(r["id"], r["reason"]) for r in rows] == [("lines:1", KEPT), ("lines:2", MALFORMED), ("lines:3", KEPT)]


def test_a_corrupt_parquet_file_is_one_malformed_row(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    rows = _read_all([DataSource(path=str(tmp_path / "broken.parquet"))])
    assert [(r["id"], r["reason"]) for r in rows] == [("broken:rg0", MALFORMED)]
    assert "not Parquet" in rows[0]["detail"]


def test_text_arrow_cannot_hold_is_quarantined(tmp_path):
    path = tmp_path / "surrogates.jsonl"
    lone = json.dumps({"id": "x", "messages": [{"role": "user", "content": "a \ud800 b"},
                                               {"role": "assistant", "content": "c"}]})
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text("\n".join([lone, deep, '{"id": 1' + "0" * 5000 + ', "prompt": "p", "completion": "c"}']) + "\n")
    rows = _read_all([DataSource(path=str(path))])
    assert [r["reason"] for r in rows] == [MALFORMED] * 3
    assert "not valid UTF-8" in rows[0]["detail"] and rows[0]["user_id"] == "x"
