"""Record shapes: one raw record of any supported format -> one canonical pipeline row.

    raylora curate configs/demo.yaml     # readers.py reads every ``data.sources`` file into these rows

Formats (named per source in the config, or ``auto``: detected per record from its keys):
    alpaca             {"instruction", "input"?, "output", "system"?}
    sharegpt           {"conversations": [{"from", "value"}]}
    openai             {"messages": [{"role", "content"}]}
    prompt_completion  {"prompt", "completion"}
A per-source ``field_map`` (canonical field -> field in the source) renames other shapes first.

Every row carries two ids: ``id``, the internal key that the reader gives it from where it was read
(``<file label>:<line or item>``, unique across the whole run), and ``user_id``, the record's own ``id``
field when it has one (null otherwise; repeats are allowed and reported). Dedup compares content, the
split and the train stage use the internal key, and the user's id travels beside it. A record that cannot
be decoded, parsed or mapped is never a crash: it becomes a row with ``reason="malformed"`` and the error
in ``detail``.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipelines.curate.reasons import KEPT, MALFORMED

# The columns every stage of curation carries; `messages` travels as JSON text inside the pipeline
# (one Arrow type whatever the source) and becomes list<struct<role, content>> only in the output.
ROW_SCHEMA = pa.schema([("id", pa.string()), ("user_id", pa.string()), ("source", pa.string()),
                        ("messages", pa.string()), ("reason", pa.string()), ("detail", pa.string())])

ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
}


class MalformedRecord(ValueError):
    """A record that cannot become a canonical conversation; the message says what is wrong with it."""


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
    raise MalformedRecord(f"no known format in keys {sorted(map(str, record))}: name the format of this source, "
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


def is_utf8(text: str) -> bool:
    """False for a string holding undecodable bytes (``surrogateescape``) or a lone ``\\ud800``-style escape:
    text that Arrow, and every tokenizer, cannot take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def user_id_of(record: dict, field_map: dict[str, str]) -> str | None:
    """The record's own id (a non-empty string or an integer), or None."""
    raw = record.get(field_map.get("id", "id"))
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or raw == "":
        return None
    return str(raw)


def canonical_row(record: Any, source: str, fmt: str, field_map: dict[str, str], key: str) -> dict:
    """A parsed record read at ``key`` -> one pipeline row; a record that does not map becomes a malformed row."""
    if not isinstance(record, dict):
        return malformed_row(key, source, f"expected a JSON object, got {type(record).__name__}")
    user_id = user_id_of(record, field_map)
    if user_id is not None and not is_utf8(user_id):
        return malformed_row(key, source, "the id is not valid UTF-8")
    try:
        messages = json.dumps(to_messages(record, fmt, field_map), ensure_ascii=False)
    except MalformedRecord as err:
        return malformed_row(key, source, str(err), user_id)
    if not is_utf8(messages):
        return malformed_row(key, source, "text that is not valid UTF-8 (undecodable bytes or a lone surrogate)",
                             user_id)
    return {"id": key, "user_id": user_id, "source": source, "messages": messages, "reason": KEPT, "detail": ""}


def malformed_row(key: str, source: str, error: str, user_id: str | None = None) -> dict:
    # an error may quote the bad text: escape what UTF-8 cannot hold, so the row itself can be written
    detail = error.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"id": key, "user_id": user_id, "source": source, "messages": "[]", "reason": MALFORMED, "detail": detail}


def parse_line(raw: bytes) -> Any:
    """One JSONL line -> a JSON value; raises MalformedRecord naming the decode or parse error."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MalformedRecord(f"invalid UTF-8 at byte {err.start}") from None
    return parse_json(text)


def parse_json(text: str) -> Any:
    """A JSON text -> its value; raises MalformedRecord on a syntax error, and on nesting or numbers too large
    for Python's parser (RecursionError, ValueError), which are as unreadable as a syntax error."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise MalformedRecord(f"not JSON: {err}") from None
