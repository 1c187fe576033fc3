"""``raylora config CONFIG --explain``: every key with its resolved value, its default and its description."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from pipelines.config.root import RayloraConfig

CHANGED = "*"  # marks a key whose resolved value differs from its default
REQUIRED = "(required)"  # the default column of a key that has no default
# a longer value (a search space, a remote path) overflows its cell instead of widening the whole column
MAX_VALUE_WIDTH = 28


def explain_config(cfg: RayloraConfig) -> str:
    """A table, one key per line: changed mark, dotted key, value, default, description."""
    rows = [["", "KEY", "VALUE", "DEFAULT", "DESCRIPTION"],
            *_rows(type(cfg), cfg.public_dump(), "")]
    widths = [max(len(row[i]) for row in rows) for i in (0, 1)]
    widths += [min(MAX_VALUE_WIDTH, max(len(row[i]) for row in rows)) for i in (2, 3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + f"  {row[4]}"
             for row in rows]
    return "\n".join([*lines, "", f"{CHANGED} the value differs from the default"]) + "\n"


def _rows(model: type[BaseModel], values: dict[str, Any], prefix: str) -> Iterator[list[str]]:
    """One section's rows; a nested section, and each section of a list, adds its keys under its own path."""
    for name, field in model.model_fields.items():
        key, value, description = prefix + name, values[name], field.description or ""
        if _is_section(field.annotation):
            yield from _rows(field.annotation, value, f"{key}.")
        elif get_origin(field.annotation) is list and _is_section(item := get_args(field.annotation)[0]):
            for index, item_values in enumerate(value):
                yield from _rows(item, item_values, f"{key}[{index}].")
        elif field.is_required():
            yield ["", key, _show(value), REQUIRED, description]
        else:
            default = field.get_default(call_default_factory=True)
            yield [CHANGED if value != default else "", key, _show(value), _show(default), description]


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _show(value: Any) -> str:
    """Strings as they are, the rest as JSON: also the YAML an override takes (null, true, [a, b])."""
    return value if isinstance(value, str) else json.dumps(value)
