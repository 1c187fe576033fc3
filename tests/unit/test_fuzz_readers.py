"""Fuzzed input never crashes a reader, and every record read ends as exactly one row.

    .venv/bin/python -m pytest tests/unit/test_fuzz_readers.py -q     # 3,000 generated files, ~35 s

Hypothesis writes random and mutated files in every format the readers take (truncated lines, wrong types,
deep nesting, invalid UTF-8 and lone surrogates, huge fields, empty files, byte-order marks, formats mixed
in one file) and reads each the way curation does: planned into chunks, read into Arrow tables of the
pipeline schema. No exception may escape, row keys are unique, every row is kept or malformed, and where
the input's records can be counted independently, read = kept + dropped holds record for record.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.config import DataSource
from pipelines.curate.formats import ROW_SCHEMA
from pipelines.curate.readers import chunk_items, plan_chunks, read_chunk_batch
from pipelines.curate.reasons import KEPT, MALFORMED

# examples per test: 3,000 files in all, about 35 s on 2 cores
EXAMPLES = {"jsonl": 700, "json": 600, "json_array": 400, "csv": 550, "csv_bytes": 400, "parquet": 200,
            "parquet_bytes": 150}


def fuzz_settings(name: str) -> settings:
    # no deadline: a 200 kB field or a deep nest takes a few ms more; no database: nothing written to the repo
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# --- what gets written ------------------------------------------------------------------------------

any_char = st.characters(codec=None, exclude_categories=())  # every code point, lone surrogates included
lone_surrogates = st.lists(st.sampled_from(["a", " ", "\ud800", "\udcff", "\udfff", "é", "😀"]), max_size=6).map("".join)
text = st.one_of(st.text(max_size=30), st.text(alphabet=any_char, max_size=30), lone_surrogates,
                 st.sampled_from(["", " ", "7", "What is 3 + 4?", "a,b", '"quoted"', "line\nbreak", "\ufeff"]))
huge = st.integers(min_value=10_000, max_value=200_000).map(lambda n: "x" * n)
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text)
json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                          max_leaves=12)
turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "gpt", "robot", 3]),
                              "content": st.one_of(text, huge, json_value)})
shaped = st.one_of(  # records of every format, with right and wrong field types
    st.fixed_dictionaries({"instruction": st.one_of(text, json_value), "output": st.one_of(text, huge, json_value)},
                          optional={"id": st.one_of(text, st.integers()), "input": text, "system": text}),
    st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries({"from": text, "value": text}),
                                                     max_size=4)}, optional={"id": text}),
    st.fixed_dictionaries({"messages": st.one_of(st.lists(turn, max_size=4), json_value)}, optional={"id": text}),
    st.fixed_dictionaries({"prompt": text, "completion": text}, optional={"id": st.integers()}),
)
record = st.one_of(shaped, json_value)
nesting = st.integers(min_value=1, max_value=20_000).map(lambda n: ("[" * n + "]" * n).encode())


@st.composite
def damaged(draw, line: bytes) -> bytes:
    """One way a line gets broken on its way to a dataset."""
    how = draw(st.sampled_from(["keep", "truncate", "insert", "bom", "crlf", "bad_utf8", "replace"]))
    cut = draw(st.integers(min_value=0, max_value=len(line)))
    if how == "truncate":
        return line[:cut]
    if how == "insert":
        return line[:cut] + draw(st.binary(max_size=8)) + line[cut:]
    if how == "bom":
        return codecs.BOM_UTF8 + line
    if how == "crlf":
        return line + b"\r"
    if how == "bad_utf8":
        return line[:cut] + b"\xff\xfe\xc3" + line[cut:]
    if how == "replace":
        return draw(st.binary(max_size=40))
    return line


@st.composite
def jsonl_lines(draw) -> list[bytes]:
    encoded = draw(st.lists(record.map(lambda r: json.dumps(r).encode()) | nesting, max_size=12))
    return [draw(damaged(line)).replace(b"\n", b"") for line in encoded]


# --- how it is read, and what must hold ----------------------------------------------------------------

def read(path: Path, chunk_bytes: int = 1 << 20) -> list[dict]:
    """The rows curation reads from ``path``: planned, read in chunks, converted to Arrow (which rejects
    text that is not UTF-8), back to Python."""
    tables = [table for item in chunk_items(plan_chunks([DataSource(path=str(path))], chunk_bytes))
              for table in read_chunk_batch({"chunk": [item["chunk"]]})]
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    assert all(set(row) == set(ROW_SCHEMA.names) for row in rows)
    assert all(row["reason"] in (KEPT, MALFORMED) for row in rows)
    assert len({row["id"] for row in rows}) == len(rows), "row keys are unique"
    for row in rows:
        if row["reason"] == KEPT:
            assert all(m["role"] in ("system", "user", "assistant") for m in json.loads(row["messages"]))
        else:
            assert row["detail"]
    return rows


def write(tmp_path_factory, name: str, data: bytes) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data)
    return path


def non_blank_lines(data: bytes) -> list[int]:
    """1-based numbers of the lines that hold anything: the records of a JSON-lines file."""
    return [n for n, line in enumerate(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), start=1) if line.strip()]


@fuzz_settings("jsonl")
@given(lines=jsonl_lines(), chunk_bytes=st.integers(min_value=1, max_value=4096), bom=st.booleans())
def test_every_jsonl_line_becomes_exactly_one_row(tmp_path_factory, lines, chunk_bytes, bom):
    data = (codecs.BOM_UTF8 if bom else b"") + b"\n".join(lines)
    rows = read(write(tmp_path_factory, "data.jsonl", data), chunk_bytes)
    assert [int(row["id"].rsplit(":", 1)[1]) for row in rows] == non_blank_lines(data)


@fuzz_settings("json")
@given(data=st.one_of(
    record.map(lambda r: json.dumps(r, indent=2).encode()),
    st.lists(record).map(lambda rs: json.dumps(rs, indent=2).encode()),
    jsonl_lines().map(b"\n".join),  # JSON lines saved under .json
    st.lists(record).map(lambda rs: json.dumps(rs).encode()).flatmap(damaged),
    nesting, st.binary(max_size=64), st.just(b""), st.just(codecs.BOM_UTF8)))
def test_a_json_file_of_any_shape_never_crashes_the_reader(tmp_path_factory, data):
    rows = read(write(tmp_path_factory, "data.json", data))
    try:
        document = json.loads(data.removeprefix(codecs.BOM_UTF8).decode("utf-8"))
    except (ValueError, RecursionError):
        return  # damaged: any number of rows, as long as reading survived (checked in `read`)
    assert len(rows) == (len(document) if isinstance(document, list) else 1)


@fuzz_settings("json_array")
@given(records=st.lists(shaped, min_size=1, max_size=10), broken=st.data(),
       damage=st.sampled_from(['{"oops" 1}', '{"a": }', "{,}", '{"a": 1,}', "nul", '{"a": "b" "c"}']))
def test_one_broken_item_of_a_pretty_printed_array_costs_one_row(tmp_path_factory, records, broken, damage):
    index = broken.draw(st.integers(min_value=0, max_value=len(records) - 1))
    items = [json.dumps(r, indent=2) for r in records]
    items[index] = damage
    data = ("[\n" + ",\n".join(items) + "\n]").encode("utf-8", "surrogatepass")
    rows = read(write(tmp_path_factory, "pretty.json", data))
    assert len(rows) == len(records)
    assert rows[index]["reason"] == MALFORMED
    assert [row["id"] for row in rows] == [f"pretty:{i}" for i in range(1, len(records) + 1)]


csv_row = st.lists(st.one_of(text, huge), min_size=0, max_size=5)


@fuzz_settings("csv")
@given(header=st.lists(st.sampled_from(["id", "prompt", "completion", "instruction", "output", "input", "x"]),
                       min_size=1, max_size=5), rows=st.lists(csv_row, max_size=8), bom=st.booleans())
def test_every_csv_record_becomes_exactly_one_row(tmp_path_factory, header, rows, bom):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    written = [row for row in rows if row]  # csv writes an empty record as a blank line, which holds no record
    writer.writerows([header, *written])
    data = (codecs.BOM_UTF8 if bom else b"") + buffer.getvalue().encode("utf-8", "surrogatepass")
    read_rows = read(write(tmp_path_factory, "data.csv", data))
    assert len(read_rows) == len(written)
    too_wide = [i for i, row in enumerate(written) if len(row) > len(header)]
    assert all(read_rows[i]["reason"] == MALFORMED for i in too_wide)


@fuzz_settings("csv_bytes")
@given(data=st.one_of(st.binary(max_size=200), jsonl_lines().map(b"\n".join),
                      st.lists(st.text(alphabet="ab,\"\r\n\x00", max_size=20), max_size=6).map(
                          lambda lines: "\n".join(["id,prompt,completion", *lines]).encode())))
def test_a_csv_file_of_any_bytes_never_crashes_the_reader(tmp_path_factory, data):
    read(write(tmp_path_factory, "data.csv", data))


parquet_column = st.one_of(
    st.lists(st.one_of(st.none(), text.map(lambda t: t.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))),
             min_size=3, max_size=3).map(lambda v: pa.array(v, pa.string())),
    st.lists(st.one_of(st.none(), st.integers(min_value=-2**63, max_value=2**63 - 1)), min_size=3, max_size=3).map(
        lambda v: pa.array(v, pa.int64())),
    st.lists(st.binary(max_size=8), min_size=3, max_size=3).map(lambda v: pa.array(v, pa.binary())),
    st.lists(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "x"]),
                                             "content": st.text(max_size=10)}), max_size=3),
             min_size=3, max_size=3).map(pa.array),
)


@fuzz_settings("parquet")
@given(columns=st.dictionaries(st.sampled_from(["id", "messages", "prompt", "completion", "instruction", "output",
                                                "conversations", "other"]), parquet_column, min_size=1, max_size=4))
def test_every_parquet_row_becomes_exactly_one_row(tmp_path_factory, columns):
    path = tmp_path_factory.mktemp("fuzz") / "data.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=2)
    assert len(read(path)) == 3


@fuzz_settings("parquet_bytes")
@given(data=st.one_of(st.binary(max_size=100), st.binary(max_size=60).map(lambda b: b"PAR1" + b + b"PAR1")))
def test_a_corrupt_parquet_file_never_crashes_the_reader(tmp_path_factory, data):
    read(write(tmp_path_factory, "data.parquet", data))
