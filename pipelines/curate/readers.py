"""Reading the sources: which chunks to read (on the driver), and each chunk -> pipeline rows (in Ray tasks).

    raylora curate configs/demo.yaml     # reads every ``data.sources`` entry through this module

Files: JSONL, JSON (an array, one object, or one object per line), Parquet and CSV, local or any fsspec
URI, and globs; ``hf://org/name`` reads a Hugging Face dataset through ``datasets``. The driver only plans
the work (which file, which byte range or row group, the line number the range starts at); Ray tasks read
the ranges and canonicalise them (formats.py), so no file is ever loaded whole into one process.

Every file gets a label unique in the run (its stem, numbered when two files share one), and every row
the key ``<label>:<position>``: the 1-based line of a JSONL line or CSV row, the item number in a JSON
array, ``rg<group>:<row>`` in Parquet. One bad record is one malformed row, whatever the damage: a line
that is not JSON, a CSV row with an unquoted comma, a JSON array item with a syntax error (the parse picks
up again at the next item), a Parquet row group that cannot be decoded. A UTF-8 byte-order mark is skipped.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from pipelines.curate.formats import (
    ROW_SCHEMA,
    MalformedRecord,
    canonical_row,
    is_utf8,
    malformed_row,
    parse_json,
    parse_line,
)
from pipelines.curate.json_items import array_items, broken_layout
from pipelines.errors import StageError

HF_PREFIX = "hf://"
CHUNK_BYTES = 2 << 20  # JSONL byte range per read task: small enough that the last tasks do not run alone
ROWS_PER_TABLE = 20_000  # rows per Arrow table a read task hands Ray
FILE_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CSV_FIELD_LIMIT = 2**31 - 1  # csv's default of 128 KiB would fail a long answer; a field is as large as its file


@dataclass(frozen=True)
class ReadChunk:
    """One unit of reading work: a byte range of a JSONL file, a Parquet row group, a whole JSON/CSV file."""

    source: str
    label: str  # names the file in row keys; unique in the run
    path: str
    kind: str  # jsonl | json | parquet | csv | hf
    fmt: str
    field_map: dict[str, str]
    start: int = 0  # jsonl: byte offset; parquet: row group
    end: int = 0  # jsonl: byte offset (exclusive)
    first_line: int = 1  # jsonl: 1-based line number at `start`
    split: str = "train"

    def row(self, record: Any, position: int | str) -> dict:
        return canonical_row(record, self.source, self.fmt, self.field_map, f"{self.label}:{position}")

    def malformed(self, position: int | str, error: str) -> dict:
        return malformed_row(f"{self.label}:{position}", self.source, error)


# --- planning on the driver: which chunks to read -------------------------------------------------

def _file_kind(path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in FILE_EXTENSIONS:
        raise StageError(f"cannot read {path}: unknown file type {suffix!r}; use one of {sorted(FILE_EXTENSIONS)}")
    return FILE_EXTENSIONS[suffix]


def source_name(source: Any, index: int) -> str:
    """The label a source's rows carry: its configured name, else the file stem (source<N> for a glob)."""
    if source.name:
        return source.name
    stem = PurePosixPath(source.path.removeprefix(HF_PREFIX)).stem
    return stem if stem and not any(ch in stem for ch in "*?[") else f"source{index}"


def unique_label(path: str, taken: set[str]) -> str:
    """The file's stem, or ``<stem>-<n>`` when another file of the run already has it (keys stay unique)."""
    stem = PurePosixPath(path).stem or "file"
    label, n = stem, 1
    while label in taken:
        n += 1
        label = f"{stem}-{n}"
    taken.add(label)
    return label


def expand_source(path: str) -> list[str]:
    """A file, glob or URI -> the files it names; a source that matches nothing fails naming it."""
    import fsspec

    try:
        fs, _, paths = fsspec.get_fs_token_paths(path)
    except Exception as err:  # an unknown protocol, missing credentials, ...: the job cannot read this source
        raise StageError(f"cannot open data source {path}: {err}") from err
    files = sorted(p for p in paths if fs.isfile(p))
    if not files:
        raise StageError(f"cannot open data source {path}: no such file (check data.sources[].path)")
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in files]


def _jsonl_chunks(path: str, base: dict, chunk_bytes: int) -> Iterator[ReadChunk]:
    """Byte ranges ending on line breaks, each with the line number it starts at (one streaming pass)."""
    import fsspec

    start, first_line, lines, pos = 0, 1, 0, 0
    with fsspec.open(path, "rb") as handle:
        for raw in handle:
            pos += len(raw)
            lines += 1
            if pos - start >= chunk_bytes:
                yield ReadChunk(path=path, kind="jsonl", start=start, end=pos, first_line=first_line, **base)
                start, first_line, lines = pos, first_line + lines, 0
    if pos > start:
        yield ReadChunk(path=path, kind="jsonl", start=start, end=pos, first_line=first_line, **base)


def _parquet_row_groups(path: str) -> int:
    """Row groups in a Parquet file; a file whose footer cannot be read is one group, which the reader then
    quarantines as one malformed row (a corrupt file is bad data, not a source that cannot be opened)."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as handle:
        try:
            return max(pq.ParquetFile(handle).metadata.num_row_groups, 1)
        except pa.ArrowException:
            return 1


def plan_chunks(sources: list[Any], chunk_bytes: int = CHUNK_BYTES) -> list[ReadChunk]:
    """Every source -> read chunks. Opens each file once, so an unreadable source fails here, naming it."""
    chunks: list[ReadChunk] = []
    labels: set[str] = set()
    for index, source in enumerate(sources):
        base = {"source": source_name(source, index), "fmt": source.format, "field_map": dict(source.field_map),
                "split": source.split}
        if source.path.startswith(HF_PREFIX):
            name = source.path.removeprefix(HF_PREFIX)
            chunks.append(ReadChunk(path=name, kind="hf", label=unique_label(name, labels), **base))
            continue
        for path in expand_source(source.path):
            kind, label = _file_kind(path), unique_label(path, labels)
            try:
                if kind == "jsonl":
                    chunks.extend(_jsonl_chunks(path, {**base, "label": label}, chunk_bytes))
                elif kind == "parquet":
                    chunks.extend(ReadChunk(path=path, kind=kind, label=label, start=group, **base)
                                  for group in range(_parquet_row_groups(path)))
                else:
                    chunks.append(ReadChunk(path=path, kind=kind, label=label, **base))
            except OSError as err:
                raise StageError(f"cannot open data source {path}: {err}") from err
    return chunks


# --- reading in Ray tasks ---------------------------------------------------------------------------

def _read_bytes(chunk: ReadChunk) -> bytes:
    """The chunk's bytes; the UTF-8 byte-order mark at the start of a file is not data."""
    import fsspec

    with fsspec.open(chunk.path, "rb") as handle:
        handle.seek(chunk.start)
        data = handle.read(chunk.end - chunk.start) if chunk.kind == "jsonl" else handle.read()
    return data.removeprefix(codecs.BOM_UTF8) if chunk.start == 0 else data


def read_chunk(chunk: ReadChunk) -> Iterator[dict]:
    """The pipeline rows of one chunk, in file order; bad records become malformed rows."""
    if chunk.kind == "jsonl":
        yield from _jsonl_rows(_read_bytes(chunk), chunk.first_line, chunk)
    elif chunk.kind == "json":
        yield from _json_rows(_read_bytes(chunk), chunk)
    elif chunk.kind == "csv":
        yield from _csv_rows(_read_bytes(chunk), chunk)
    elif chunk.kind == "parquet":
        yield from _parquet_rows(chunk)
    elif chunk.kind == "hf":
        yield from _hf_rows(chunk)
    else:
        raise ValueError(f"unknown chunk kind {chunk.kind!r}")


def _jsonl_rows(data: bytes, first_line: int, chunk: ReadChunk) -> Iterator[dict]:
    """JSON lines -> pipeline rows keyed by line number; a bad line becomes a malformed row."""
    for offset, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue  # blank lines hold no record
        try:
            record = parse_line(raw)
        except MalformedRecord as err:
            yield chunk.malformed(first_line + offset, str(err))
            continue
        yield chunk.row(record, first_line + offset)


def _json_rows(data: bytes, chunk: ReadChunk) -> Iterator[dict]:
    """A .json file: an array of records, one record, or (saved under the wrong name) JSON lines.

    A document with a syntax error is read as far as it goes: JSON lines line by line, an array item by
    item, so one broken record costs one malformed row. Undecodable bytes are kept as lone surrogates
    (``surrogateescape``) and quarantine only the records that hold them.
    """
    text = data.decode("utf-8", errors="surrogateescape")
    if not text.strip():
        return  # an empty file holds no record
    try:
        document = parse_json(text)
    except MalformedRecord as err:
        layout = broken_layout(text)
        if layout == "lines":
            yield from _jsonl_rows(data, 1, chunk)
        elif layout == "array":
            for index, item in enumerate(array_items(text), start=1):
                yield chunk.malformed(index, str(item)) if isinstance(item, MalformedRecord) else chunk.row(item, index)
        else:
            yield chunk.malformed(1, str(err))
        return
    for index, record in enumerate(document if isinstance(document, list) else [document], start=1):
        yield chunk.row(record, index)


def _csv_rows(data: bytes, chunk: ReadChunk) -> Iterator[dict]:
    """CSV with a header row -> pipeline rows keyed by the line a row ends on.

    Undecodable bytes are kept per field (``surrogateescape``), so only the rows holding them are
    quarantined; so is a row with more fields than the header (an unquoted comma) or one csv cannot parse.
    """
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))
    header: list[str] | None = None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield chunk.malformed(reader.line_num, f"not CSV: {err}")
            continue
        if not fields:
            continue  # a blank line holds no record
        if header is None:
            header = fields
            continue
        if len(fields) > len(header):
            yield chunk.malformed(reader.line_num, f"{len(fields)} fields where the header has {len(header)}: "
                                                   "quote fields that hold commas")
            continue
        undecodable = [column for column, value in zip(header, fields, strict=False) if not is_utf8(value)]
        if undecodable:
            yield chunk.malformed(reader.line_num, f"invalid UTF-8 in column {undecodable[0]!r}")
            continue
        yield chunk.row(dict(zip(header, fields, strict=False)), reader.line_num)


def _parquet_rows(chunk: ReadChunk) -> Iterator[dict]:
    """One Parquet row group; a group that cannot be decoded is one malformed row."""
    import fsspec
    import pyarrow.parquet as pq

    try:
        with fsspec.open(chunk.path, "rb") as handle:
            records = pq.ParquetFile(handle).read_row_group(chunk.start).to_pylist()
    except (pa.ArrowException, ValueError, OverflowError) as err:  # corrupt pages, values Python cannot hold
        yield chunk.malformed(f"rg{chunk.start}", f"not Parquet: {err}")
        return
    for index, record in enumerate(records):
        yield chunk.row(record, f"rg{chunk.start}:{index}")


def _hf_rows(chunk: ReadChunk) -> Iterator[dict]:
    """A Hugging Face dataset, streamed (the hub path; tests here read local files only)."""
    import datasets

    try:
        dataset = datasets.load_dataset(chunk.path, split=chunk.split, streaming=True)
    except Exception as err:  # hub or network errors: the source cannot be opened
        raise StageError(f"cannot open data source hf://{chunk.path}: {err}") from err
    for index, record in enumerate(dataset):
        yield chunk.row(record, index)


def read_chunk_batch(batch: dict[str, Any]) -> Iterator[pa.Table]:
    """Ray ``map_batches`` UDF: chunk descriptions in, pipeline rows out (tables of at most 20k rows)."""
    for spec in batch["chunk"]:
        rows: list[dict] = []
        for row in read_chunk(ReadChunk(**json.loads(str(spec)))):
            rows.append(row)
            if len(rows) >= ROWS_PER_TABLE:
                yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def chunk_items(chunks: list[ReadChunk]) -> list[dict[str, str]]:
    """Chunks as plain rows for ``ray.data.from_items`` (only plain data crosses Ray boundaries)."""
    return [{"chunk": json.dumps(asdict(chunk))} for chunk in chunks]
