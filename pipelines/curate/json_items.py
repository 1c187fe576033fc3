"""JSON that does not parse, read as far as it goes: how a broken .json file is laid out, and the items of a
broken array one by one (a MalformedRecord for each item that does not parse), so one bad record costs one row."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

from pipelines.curate.formats import MalformedRecord


def broken_layout(text: str, probe: int = 5) -> str:
    """How a .json file that does not parse is laid out: ``lines`` when its first line is a whole value and
    more follows, or one of its first lines is a whole record (JSON lines whose first line broke); ``array``
    when it opens with a bracket; else ``one`` broken document. A pretty-printed document spreads every
    record over several lines, so no line of it parses alone."""
    lines = [line for line in itertools.islice(io.StringIO(text), 1000) if line.strip()][:probe]
    if is_json(lines[0]) and len(text.strip()) > len(lines[0].strip()):
        return "lines"
    if text.lstrip().startswith("["):
        return "array"
    return "lines" if any(is_json(line, dict) for line in lines) else "one"


def is_json(line: str, kind: type = object) -> bool:
    """Whether ``line`` alone is a JSON value of type ``kind``."""
    try:
        return isinstance(json.loads(line), kind)
    except (ValueError, RecursionError):
        return False


def array_items(text: str) -> Iterator[Any]:
    """The items of a JSON array that has syntax errors: each value that parses, and a MalformedRecord for
    each item that does not, after which the parse skips to the next top-level comma."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            item, pos = decoder.raw_decode(text, pos)
            yield item
        except (ValueError, RecursionError) as err:
            yield MalformedRecord(f"not JSON: {err}")
            pos = max(_item_end(text, pos), pos + 1)  # a stray closing bracket is skipped, never parsed again
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1  # a missing comma is tolerated: the next value starts where this one ended


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _item_end(text: str, start: int) -> int:
    """Where a broken array item ends: the next comma or closing bracket outside strings and brackets.
    A line break ends a string too (JSON strings hold none), so an unclosed quote loses one line, not the file."""
    depth, in_string, pos = 0, False, start
    while pos < len(text):
        char = text[pos]
        if in_string:
            if char == "\\":
                pos += 1
            elif char in '"\n':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            if depth == 0:
                return pos
            depth -= 1
        elif char == "," and depth == 0:
            return pos
        pos += 1
    return len(text)
