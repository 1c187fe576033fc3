"""``tune.search_space``: dotted config keys and the values a trial may give them.

    tune:
      search_space:
        adapter.r: {choice: [4, 8, 16]}
        adapter.alpha: {choice: [1r, 2r, 16]}     # 2r is twice the trial's r, 16 is 16
        train.lr: {loguniform: [1.0e-4, 1.0e-3]}

A point of the space (``{"adapter.r": 8, "train.lr": 3e-4}``) becomes a trial's config by ``apply_point``.
``check_search_space`` fails a config before any trial starts when a key is not a config key, or when a
value the space can give fails that key's validation, naming the key.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from pydantic import BaseModel, ValidationError

ALPHA_KEY = "adapter.alpha"
R_KEY = "adapter.r"
MULTIPLE_OF_R = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*r\s*$")


def alpha_from(value: Any, r: int) -> Any:
    """``adapter.alpha`` as a trial sets it: ``'2r'`` is twice the trial's r; anything else is itself."""
    match = MULTIPLE_OF_R.match(value) if isinstance(value, str) else None
    return round(float(match.group(1)) * r) if match else value


def apply_point(raw: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dict ``raw`` with each dotted key of ``point`` set (alpha multiples of r resolved
    against the r the point, or else the config, gives)."""
    out = copy.deepcopy(raw)
    for key, value in point.items():
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    adapter = out.get("adapter", {})
    if ALPHA_KEY in point:
        adapter["alpha"] = alpha_from(point[ALPHA_KEY], int(adapter.get("r", 8)))
    return out


def candidate_values(spec: dict[str, list]) -> list[Any]:
    """The values worth validating: every choice or grid value, the bounds of a range."""
    (kind, values), = spec.items()
    if kind == "randint":
        return [values[0], values[1] - 1]
    return list(values)


def is_config_key(model: type[BaseModel], key: str) -> bool:
    """Whether the dotted ``key`` names a field of ``model`` (through nested sections)."""
    *sections, leaf = key.split(".")
    for section in sections:
        field = model.model_fields.get(section)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return leaf in model.model_fields


def check_search_space(root: type[BaseModel], raw: dict[str, Any], space: dict[str, dict[str, list]]) -> None:
    """Raise ValueError naming the first key of ``space`` that is not a config key, or whose values fail
    validation. ``raw`` is the config dict the trials start from."""
    base = {**raw, "tune": {**raw.get("tune", {}), "search_space": {}}}
    for key, spec in space.items():
        if key.startswith("tune.") or not is_config_key(root, key):
            raise ValueError(f"tune.search_space: {key} is not a config key a trial can set: use a dotted key such "
                             "as adapter.r, adapter.alpha, train.lr (see `raylora config CONFIG --explain`)")
        for value in candidate_values(spec):
            try:
                root.model_validate(apply_point(base, {key: value}))
            except ValidationError as err:
                problem = err.errors()[0]
                where = ".".join(str(part) for part in problem["loc"])
                raise ValueError(f"tune.search_space: {key}={value!r} is not a valid value "
                                 f"({where}: {problem['msg'].removeprefix('Value error, ')})") from None

