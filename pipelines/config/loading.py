"""YAML in, a validated ``RayloraConfig`` out (and back), with error messages that name the fix."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.config.root import RayloraConfig
from pipelines.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], value); the value is read as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.path=value (e.g. adapter.r=16)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    if isinstance(value, str):
        value = _yaml11_float(value)
    return key.split("."), value


def _yaml11_float(text: str) -> float | str:
    """YAML 1.1 reads ``1e-4`` as a string; on the command line it is a learning rate."""
    try:
        return float(text) if any(ch.isdigit() for ch in text) and text.strip() == text else text
    except ValueError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` into a copy of the raw config dict."""
    out = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _section_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The allowed keys at the section that ``loc`` points into, for 'did you mean' hints."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(part) for part in loc) or "(config)"
        if item["type"] == "extra_forbidden":
            allowed = _section_fields(RayloraConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"{key}: unknown key; {hint}allowed here: {', '.join(allowed)}")
        elif item["type"] == "missing":
            lines.append(f"{key}: required; add it to the YAML or pass {key}=...")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" + (f" (got {item['input']!r})" if item["type"] != "value_error" else ""))
    if len(lines) == 1:  # the usual case: one line
        return f"invalid config: {lines[0]}"
    return "invalid config:\n  " + "\n  ".join(lines)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: YAML keeps the last one
    silently, so an edit above a forgotten duplicate would change nothing."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{key_node.start_mark.name} line {line}: key {key!r} is given twice (first on "
                                  f"line {seen[key]}): keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RayloraConfig:
    """Read a YAML config, apply ``a.b.c=value`` overrides, validate. Raises ConfigError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass a YAML file such as configs/demo.yaml")
    try:
        with path.open() as handle:  # the file's name goes into the marks of errors
            raw = yaml.load(handle, Loader=UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, data, ...), not {type(raw).__name__}")
    return validate_config(apply_overrides(raw, overrides or []))


def validate_config(raw: dict[str, Any]) -> RayloraConfig:
    try:
        return RayloraConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def dump_config(cfg: RayloraConfig) -> str:
    """The resolved config as YAML, secrets redacted."""
    return yaml.safe_dump(cfg.public_dump(), sort_keys=False)
