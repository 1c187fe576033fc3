"""A study's YAML (``configs/studies/NAME.yaml``): its own schema, not a run config.

    name: targets
    title: query and value only vs all linear layers
    source: Hu et al. 2021; Dettmers et al. 2023
    grid:                                   # tune's search-space syntax, grid only
      adapter.target_modules: {grid: [qv, all-linear]}
    seeds: [0, 1, 2]                        # train.seed of each trial: the spread a verdict is judged against
    settings: {train.max_steps: 60}         # config keys every trial shares
    claims:
      - statement: adapters on every linear layer reach a lower eval loss
        metric: eval_loss
        a: {adapter.target_modules: all-linear}
        b: {adapter.target_modules: qv}
        expect: lower                       # lower | higher | similar: what a minus b should be
        tolerance: 0.0
    reduced: {seeds: [0], settings: {train.max_steps: 2}}   # `raylora study NAME CONFIG --reduced`

The CONFIG a study runs on supplies the model and the data; the study supplies the grid. A claim compares
groups of grid points, per seed: ``a`` minus ``b``, each side one point or a list of points whose metrics
add up (so ``a: [{optimizer: adamw, r: $max}, {optimizer: sgd, r: $min}]`` with the mirror image as ``b`` is
"the adamw - sgd gap at the largest r minus that gap at the smallest"). ``verdict.py`` judges the per-seed
differences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import RayloraConfig
from pipelines.config.search_space import R_KEY, is_config_key
from pipelines.errors import ConfigError

STUDIES_DIR = Path(__file__).resolve().parents[2] / "configs" / "studies"
VARIANT_KEY = "data"  # a claim's selector key for the data variant of a grid point
LARGEST, SMALLEST = "$max", "$min"  # selector values: the largest / smallest value of that key in the grid
MIN_SEEDS = 3


class StudyPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Selector = dict[str, Any]


class Claim(StudyPart):
    statement: str = Field(description="the finding as the field states it, in one line")
    metric: str = Field(
        description="a metric of the trials' TrainResult: eval_loss, eval_exact_match, eval/<set>/loss, "
        "peak_memory_mib, time/step_ms, ...")
    a: Selector | list[Selector] = Field(
        description="grid point(s) of the first side: {config key or 'data': value}; values may be $max / $min")
    b: Selector | list[Selector] = Field(description="grid point(s) of the side subtracted from a")
    expect: Literal["lower", "higher", "similar"] = Field(
        description="what the claim says of a minus b: lower (< -tolerance), higher (> tolerance), or similar "
        "(within +-tolerance)")
    tolerance: float = Field(
        0.0, ge=0.0, description="the smallest difference, in the metric's units, that matters (similar: the "
        "largest that does not)")

    @property
    def sides(self) -> tuple[list[Selector], list[Selector]]:
        as_list = lambda side: side if isinstance(side, list) else [side]  # noqa: E731
        return as_list(self.a), as_list(self.b)


class Reduced(StudyPart):
    seeds: list[int] | None = Field(
        None, min_length=1, description="seeds of the reduced run (fewer than 3 give an inconclusive verdict)")
    grid: dict[str, dict[str, list]] = Field(
        default_factory=dict, description="grid keys whose values the reduced run narrows (same syntax)")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="config keys the reduced run sets on top of settings (a few steps)")


class Study(StudyPart):
    name: str = Field(description="the study's name: its file stem and `raylora study NAME`")
    title: str = Field(description="what is compared, in a few words")
    source: str = Field(description="where the finding comes from (papers, blog experiments)")
    grid: dict[str, dict[str, list]] = Field(
        description="config key -> {grid: [values]}, tune.search_space syntax: every combination is a trial")
    seeds: list[int] = Field(
        min_length=MIN_SEEDS, description=f"train.seed values each grid point runs with (at least {MIN_SEEDS})")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="dotted config keys every trial of the study shares, e.g. train.max_steps")
    data: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="data variants: name -> dotted config keys (data.*, curate.*) applied to CONFIG and curated "
        "by the curation stage; each variant is one search over the grid; {} is CONFIG's own curated data")
    max_rank_fraction: float = Field(
        0.5, gt=0.0, le=1.0,
        description="grids scale to the model: adapter.r values above this fraction of the base's hidden size "
        "become that cap (then duplicates go), so r 256 runs as r 64 on a hidden size of 128")
    claims: list[Claim] = Field(min_length=1, description="what the study checks; all must hold to reproduce")
    reduced: Reduced = Field(
        default_factory=Reduced, description="the few-step version tests run (`--reduced`)")

    @field_validator("grid")
    @classmethod
    def _grid_of_config_keys(cls, grid: dict[str, dict[str, list]]) -> dict[str, dict[str, list]]:
        for key, spec in grid.items():
            if not is_config_key(RayloraConfig, key) or key.startswith("tune.") or key == "train.seed":
                raise ValueError(f"grid key {key} is not a config key a trial can set (train.seed comes from "
                                 "seeds); use one such as adapter.r, train.optimizer")
            if list(spec) != ["grid"] or not isinstance(spec["grid"], list) or not spec["grid"]:
                raise ValueError(f"grid.{key} must be {{grid: [values]}} (got {spec})")
        return grid

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct (got {seeds})")
        return seeds

    @model_validator(mode="after")
    def _claims_select_grid_points(self) -> Study:
        axes = {**{k: spec["grid"] for k, spec in self.grid.items()}, **({VARIANT_KEY: list(self.data)}
                                                                        if self.data else {})}
        for number, claim in enumerate(self.claims):
            for selector in (s for side in claim.sides for s in side):
                for key, value in selector.items():
                    if key not in axes:
                        raise ValueError(f"claims[{number}] selects on {key}, which is not a grid key "
                                         f"({', '.join(axes)})")
                    if value not in (*axes[key], LARGEST, SMALLEST):
                        raise ValueError(f"claims[{number}] selects {key}={value!r}, not in the grid {axes[key]}")
        selected = {(k, repr(v)) for claim in self.claims for side in claim.sides for s in side for k, v in s.items()
                    if v not in (LARGEST, SMALLEST)}
        for key, spec in self.reduced.grid.items():
            if key not in self.grid:
                raise ValueError(f"reduced.grid.{key} is not a grid key ({', '.join(self.grid)})")
            dropped = [value for k, value in selected if k == key and value not in map(repr, spec.get("grid", []))]
            if dropped:
                raise ValueError(f"reduced.grid.{key} drops {', '.join(dropped)}, which a claim selects: keep it, "
                                 "or select with $max / $min")
        return self

    def scaled_grid(self, hidden_size: int, reduced: bool = False) -> dict[str, list]:
        """The grid's values for a base of ``hidden_size``: ranks capped (see ``max_rank_fraction``)."""
        grid = {k: spec["grid"] for k, spec in {**self.grid, **(self.reduced.grid if reduced else {})}.items()}
        if R_KEY in grid:
            cap = max(1, int(hidden_size * self.max_rank_fraction))
            grid[R_KEY] = list(dict.fromkeys(min(int(r), cap) for r in grid[R_KEY]))
        return grid

    def run_seeds(self, reduced: bool = False) -> list[int]:
        return (self.reduced.seeds or self.seeds) if reduced else self.seeds

    def run_settings(self, reduced: bool = False) -> dict[str, Any]:
        return {**self.settings, **(self.reduced.settings if reduced else {})}


def study_path(name: str) -> Path:
    return STUDIES_DIR / f"{name}.yaml"


def study_names() -> list[str]:
    return sorted(path.stem for path in STUDIES_DIR.glob("*.yaml"))


def describe_studies() -> str:
    """``raylora study --list``: each study, its source, and its claims."""
    lines = []
    for name in study_names():
        study = load_study(name)
        lines.append(f"{name:<18} {study.title} ({study.source})")
        lines += [f"{'':<18}   - {c.statement} [{c.metric}, {c.expect}]" for c in study.claims]
    return "\n".join(lines) + "\n"


def one_line(err: ValidationError) -> str:
    """The first problem, as ``key: message``."""
    problem = err.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "(study)"
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{where}: {message}"


def load_study(name_or_path: str | Path) -> Study:
    """A study by name (``configs/studies/NAME.yaml``) or path; ConfigError with one line naming the key."""
    path = Path(name_or_path)
    if not path.suffix:
        path = study_path(str(name_or_path))
        if not path.is_file():
            raise ConfigError(f"no study {name_or_path}: `raylora study --list` shows {', '.join(study_names())}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"study {path} cannot be read: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"study {path} must be a mapping with name, grid, seeds, claims")
    try:
        study = Study.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"study {path}: {one_line(err)}") from None
    if study.name != path.stem:
        raise ConfigError(f"study {path}: name: {study.name} must be the file stem {path.stem}")
    return study
