"""Read instruction data of any shape into one canonical record: ``id``, ``source``, ``messages``.

    raylora curate configs/demo.yaml     # reads every ``data.sources`` entry through this module

Formats (named per source in the config, or ``auto``: detected per record from its keys):
    alpaca             {"instruction", "input"?, "output", "system"?}
    sharegpt           {"conversations": [{"from", "value"}]}
    openai             {"messages": [{"role", "content"}]}
    prompt_completion  {"prompt", "completion"}
A per-source ``field_map`` (canonical field -> field in the source) renames other shapes first.

Files: JSONL, JSON (an array or one object per line), Parquet and CSV, local or any fsspec URI, and globs;
``hf://org/name`` reads a Hugging Face dataset through ``datasets``. The driver only plans the work
(which file, which byte range or row group, the line number the range starts at); Ray tasks read the
ranges and canonicalise them, so no file is ever loaded whole into one process.

A record that cannot be decoded, parsed or mapped is never a crash: it becomes a row with
``reason="malformed"`` and the error in ``detail``. A line that cannot be decoded or parsed has no id
of its own; it gets ``<file stem>:<line number>`` (1-based).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa

from pipelines.curate.reasons import KEPT, MALFORMED
from pipelines.errors import StageError

HF_PREFIX = "hf://"
CHUNK_BYTES = 2 << 20  # JSONL byte range per read task: small enough that the last tasks do not run alone
FILE_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# The columns every stage of curation carries; `messages` travels as JSON text inside the pipeline
# (one Arrow type whatever the source) and becomes list<struct<role, content>> only in the output.
ROW_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("messages", pa.string()),
                        ("reason", pa.string()), ("detail", pa.string())])

ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
}


class MalformedRecord(ValueError):
    """A record that cannot become a canonical conversation; the message says what is wrong with it."""


@dataclass(frozen=True)
class ReadChunk:
    """One unit of reading work: a byte range of a JSONL file, a Parquet row group, a whole JSON/CSV file."""

    source: str
    path: str
    kind: str  # jsonl | json | parquet | csv | hf
    fmt: str
    field_map: dict[str, str]
    start: int = 0  # jsonl: byte offset; parquet: row group
    end: int = 0  # jsonl: byte offset (exclusive)
    first_line: int = 1  # jsonl: 1-based line number at `start`
    split: str = "train"


def _expect_str(record: dict, key: str, *, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise MalformedRecord(f"missing field {key!r}")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise MalformedRecord(f"field {key!r} is {type(value).__name__}, expected a string")
    return value


def _normalise_role(role: Any, where: str) -> str:
    if not isinstance(role, str) or role.strip().lower() not in ROLE_ALIASES:
        raise MalformedRecord(f"{where}: unknown role {role!r} (expected one of {sorted(set(ROLE_ALIASES))})")
    return ROLE_ALIASES[role.strip().lower()]


def _content_text(content: Any, where: str) -> str:
    """OpenAI content is a string or a list of parts; the text parts are what a text model sees."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise MalformedRecord(f"{where}: content is {type(content).__name__}, expected a string")


def _turns(record: dict, key: str, role_key: str, text_key: str) -> list[dict[str, str]]:
    turns = record.get(key)
    if not isinstance(turns, list):
        raise MalformedRecord(f"field {key!r} is {type(turns).__name__ if key in record else 'missing'}, "
                              "expected a list of turns")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise MalformedRecord(f"{where} is {type(turn).__name__}, expected an object")
        if text_key not in turn:
            raise MalformedRecord(f"{where}: missing {text_key!r}")
        messages.append({"role": _normalise_role(turn.get(role_key), where),
                         "content": _content_text(turn[text_key], where)})
    return messages


def detect_format(record: dict) -> str:
    """The format of one record, from its keys."""
    if "messages" in record:
        return "openai"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    raise MalformedRecord(f"no known format in keys {sorted(record)}: name the format of this source, "
                          "or map its fields with field_map (e.g. {instruction: question, output: answer})")


def to_messages(record: dict, fmt: str = "auto", field_map: dict[str, str] | None = None) -> list[dict[str, str]]:
    """One raw record -> canonical messages with roles system / user / assistant. Raises MalformedRecord."""
    if field_map:
        record = {**record, **{canonical: record[theirs] for canonical, theirs in field_map.items()
                               if theirs in record}}
    fmt = detect_format(record) if fmt == "auto" else fmt
    if fmt == "openai":
        return _turns(record, "messages", "role", "content")
    if fmt == "sharegpt":
        return _turns(record, "conversations", "from", "value")
    if fmt == "alpaca":
        instruction = _expect_str(record, "instruction")
        extra = _expect_str(record, "input", required=False)
        system = _expect_str(record, "system", required=False)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "system", "content": system}] if system.strip() else []
        return [*messages, {"role": "user", "content": prompt},
                {"role": "assistant", "content": _expect_str(record, "output")}]
    if fmt == "prompt_completion":
        return [{"role": "user", "content": _expect_str(record, "prompt")},
                {"role": "assistant", "content": _expect_str(record, "completion")}]
    raise MalformedRecord(f"unknown format {fmt!r}")


def stable_id(source: str, record: Any) -> str:
    """A record with no id of its own is named by its content: the same record gets the same id every run."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(f"{source}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


def canonical_row(record: Any, source: str, fmt: str, field_map: dict[str, str], fallback_id: str) -> dict:
    """A parsed record -> one pipeline row; a record that does not map becomes a malformed row."""
    if not isinstance(record, dict):
        return malformed_row(fallback_id, source, f"expected a JSON object, got {type(record).__name__}")
    id_field = field_map.get("id", "id")
    raw_id = record.get(id_field)
    row_id = str(raw_id) if isinstance(raw_id, (str, int)) and str(raw_id) else None
    try:
        messages = to_messages(record, fmt, field_map)
    except MalformedRecord as err:
        return malformed_row(row_id or fallback_id, source, str(err))
    return {"id": row_id or stable_id(source, record), "source": source,
            "messages": json.dumps(messages, ensure_ascii=False), "reason": KEPT, "detail": ""}


def malformed_row(row_id: str, source: str, error: str) -> dict:
    return {"id": row_id, "source": source, "messages": "[]", "reason": MALFORMED, "detail": error}


def parse_line(raw: bytes) -> Any:
    """One JSONL line -> a JSON value; raises MalformedRecord naming the decode or parse error."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedRecord(f"invalid UTF-8 at byte {err.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedRecord(f"not JSON: {err}") from None


def _is_utf8(value: Any) -> bool:
    """False for a string holding bytes that ``surrogateescape`` could not decode."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def plan_chunks(sources: list[Any], chunk_bytes: int = CHUNK_BYTES) -> list[ReadChunk]:
    """Every source -> read chunks. Opens each file once, so an unreadable source fails here, naming it."""
    chunks: list[ReadChunk] = []
    for index, source in enumerate(sources):
        base = {"source": source_name(source, index), "fmt": source.format, "field_map": dict(source.field_map),
                "split": source.split}
        if source.path.startswith(HF_PREFIX):
            chunks.append(ReadChunk(path=source.path.removeprefix(HF_PREFIX), kind="hf", **base))
            continue
        for path in expand_source(source.path):
            kind = _file_kind(path)
            try:
                if kind == "jsonl":
                    chunks.extend(_jsonl_chunks(path, base, chunk_bytes))
                elif kind == "parquet":
                    chunks.extend(ReadChunk(path=path, kind=kind, start=group, **base)
                                  for group in range(_parquet_row_groups(path)))
                else:
                    chunks.append(ReadChunk(path=path, kind=kind, **base))
            except OSError as err:
                raise StageError(f"cannot open data source {path}: {err}") from err
    return chunks


def _parquet_row_groups(path: str) -> int:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_row_groups


# --- reading in Ray tasks ---------------------------------------------------------------------------

def _stem(path: str) -> str:
    return PurePosixPath(path).stem


def read_chunk(chunk: ReadChunk) -> Iterator[dict]:
    """The pipeline rows of one chunk, in file order; bad records become malformed rows."""
    import fsspec

    stem = _stem(chunk.path)
    fmt, fmap, source = chunk.fmt, chunk.field_map, chunk.source
    if chunk.kind == "jsonl":
        with fsspec.open(chunk.path, "rb") as handle:
            handle.seek(chunk.start)
            data = handle.read(chunk.end - chunk.start)
        yield from _jsonl_rows(data, chunk.first_line, chunk)
    elif chunk.kind == "json":
        with fsspec.open(chunk.path, "rb") as handle:
            raw_bytes = handle.read()
        try:
            records = json.loads(raw_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            # one object per line saved as .json: read it line by line instead of failing the whole file
            if b"\n" in raw_bytes.strip():
                yield from _jsonl_rows(raw_bytes, 1, chunk)
                return
            yield malformed_row(f"{stem}:1", source, f"not JSON: {err}")
            return
        for index, record in enumerate(records if isinstance(records, list) else [records], start=1):
            yield canonical_row(record, source, fmt, fmap, f"{stem}:{index}")
    elif chunk.kind == "csv":
        with fsspec.open(chunk.path, "rb") as handle:
            # surrogateescape keeps undecodable bytes visible per field, so only the rows holding them are quarantined
            text = handle.read().decode("utf-8", errors="surrogateescape")
        for index, record in enumerate(csv.DictReader(io.StringIO(text)), start=2):  # line 1 is the header
            undecodable = [column for column, value in record.items() if not _is_utf8(value)]
            if undecodable:
                yield malformed_row(f"{stem}:{index}", source, f"invalid UTF-8 in column {undecodable[0]!r}")
                continue
            yield canonical_row(dict(record), source, fmt, fmap, f"{stem}:{index}")
    elif chunk.kind == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(chunk.path, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_group(chunk.start)
        for index, record in enumerate(table.to_pylist()):
            yield canonical_row(record, source, fmt, fmap, f"{stem}:rg{chunk.start}:{index}")
    elif chunk.kind == "hf":
        yield from _read_hf(chunk)
    else:
        raise ValueError(f"unknown chunk kind {chunk.kind!r}")


def _jsonl_rows(data: bytes, first_line: int, chunk: ReadChunk) -> Iterator[dict]:
    """JSON lines -> pipeline rows, each id'd by its line number; a bad line becomes a malformed row."""
    stem = _stem(chunk.path)
    for offset, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue  # blank lines hold no record
        position = f"{stem}:{first_line + offset}"
        try:
            record = parse_line(raw)
        except MalformedRecord as err:
            yield malformed_row(position, chunk.source, str(err))
            continue
        yield canonical_row(record, chunk.source, chunk.fmt, chunk.field_map, position)


def _read_hf(chunk: ReadChunk) -> Iterator[dict]:
    """A Hugging Face dataset, streamed (the hub path; tests here read local files only)."""
    import datasets

    try:
        dataset = datasets.load_dataset(chunk.path, split=chunk.split, streaming=True)
    except Exception as err:  # hub or network errors: the source cannot be opened
        raise StageError(f"cannot open data source hf://{chunk.path}: {err}") from err
    for index, record in enumerate(dataset):
        yield canonical_row(record, chunk.source, chunk.fmt, chunk.field_map, f"{_stem(chunk.path)}:{index}")


def read_chunk_batch(batch: dict[str, Any]) -> Iterator[pa.Table]:
    """Ray ``map_batches`` UDF: chunk descriptions in, pipeline rows out (tables of at most 20k rows)."""
    for spec in batch["chunk"]:
        spec = str(spec)
        rows: list[dict] = []
        for row in read_chunk(ReadChunk(**json.loads(spec))):
            rows.append(row)
            if len(rows) >= 20_000:
                yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def chunk_items(chunks: list[ReadChunk]) -> list[dict[str, str]]:
    """Chunks as plain rows for ``ray.data.from_items`` (only plain data crosses Ray boundaries)."""
    return [{"chunk": json.dumps(asdict(chunk))} for chunk in chunks]
