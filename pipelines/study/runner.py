"""``raylora study NAME CONFIG``: one study as Ray Tune grid searches, then its table, plot and verdict.

    raylora study --list
    raylora study targets configs/demo.yaml
    raylora study qlora-vs-lora configs/demo.yaml --reduced        # the few-step version the tests run

CONFIG supplies the model and the data, the study its grid, seeds and settings. Each data variant of the
study (or CONFIG's own data) is curated by the curation stage and searched by the tune stage
(``pipelines.tune.tune``: grid x seeds, every trial a train run to the end); each search's MLflow run is
nested under the study's run. ``<workdir>/studies/NAME/`` gets ``table.md`` (one row per grid point and
seed), ``plot.png`` and ``verdict.json``; a rerun with the same inputs reports the verdict it wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from pipelines import tracking
from pipelines.artifacts import TrainResult
from pipelines.config import RayloraConfig, validate_config
from pipelines.config.search_space import apply_point
from pipelines.errors import ConfigError
from pipelines.models import resolve_base_model
from pipelines.study.report import plot_claims, table_markdown
from pipelines.study.schema import LARGEST, SMALLEST, VARIANT_KEY, Claim, Study, study_path
from pipelines.study.verdict import claim_verdict, overall

SEED_KEY = "train.seed"
OWN_DATA = ""  # the variant name of CONFIG's own curated data
# a study's search: a grid over grid x seeds (tune.search_space), every trial run to the end
STUDY_SEARCH = {"enabled": True, "search": "grid", "num_samples": 1, "scheduler": "fifo", "metric": "eval_loss",
                "mode": "min"}
FIXED_TUNE_KEYS = tuple(f"tune.{key}" for key in [*STUDY_SEARCH, "search_space"])


def say(line: str) -> None:
    print(f"raylora study: {line}", flush=True)


def hidden_size(cfg: RayloraConfig) -> int:
    """The base model's hidden size, which caps the grid's ranks."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_base_model(cfg.model.base), revision=cfg.model.revision,
                                        trust_remote_code=cfg.model.trust_remote_code)
    return int(config.get_text_config().hidden_size)


def check_overrides(study: Study, overrides: dict[str, Any]) -> None:
    """Refuse a command-line key that the study itself varies or fixes, which would otherwise be silently
    replaced: a grid axis, the seeds, the shape of its search. (A data variant's keys replace CONFIG's data in
    that arm only, which is what the variant is; CONFIG's own arm keeps the command line's.)"""
    varied = {key: f"the grid of study {study.name}" for key in study.grid}
    varied[SEED_KEY] = f"the seeds of study {study.name}"
    varied.update({key: "how a study searches (a grid run to the end)" for key in FIXED_TUNE_KEYS})
    for key in overrides:
        if key in varied:
            raise ConfigError(f"{key} on the command line is {varied[key]}, which would replace it: drop it, or "
                              f"run a copy of {study_path(study.name)} with your change (raylora study PATH CONFIG)")


def replaced_settings(study: Study, overrides: dict[str, Any], reduced: bool) -> list[str]:
    """A line for each of the study's settings that a command-line key replaces (the command line wins)."""
    settings = study.run_settings(reduced)
    return [f"{key}={overrides[key]} from the command line replaces the study's {settings[key]}"
            for key in overrides if key in settings and overrides[key] != settings[key]]


def search_configs(study: Study, cfg: RayloraConfig, grid: dict[str, list], seeds: list[int],
                   reduced: bool, overrides: dict[str, Any] | None = None
                   ) -> dict[str, tuple[RayloraConfig, RayloraConfig]]:
    """Per data variant, the config its data is curated with (CONFIG plus the variant's keys, curated into a
    directory of its own; a variant without keys is CONFIG's own curation) and the config of its search
    (that plus the study's settings, then the command line's keys again, so they win: a grid over grid x
    seeds, every trial run to the end). Invalid values fail here, before any Ray work."""
    base = cfg.model_dump(mode="json")
    suffix = "-reduced" if reduced else ""
    out = {}
    for variant, keys in (study.data or {OWN_DATA: {}}).items():
        data_keys = {**keys, "curate.output_dir": f"studies/{study.name}/data-{variant}"} if keys else {}
        curate_cfg = validate_config(apply_point(base, data_keys))
        raw = apply_point(curate_cfg.model_dump(mode="json"), {**study.run_settings(reduced), **(overrides or {})})
        raw["run_name"] = f"study-{study.name}{suffix}" + (f"-{variant}" if variant else "")
        raw["tune"] = {**raw["tune"], **STUDY_SEARCH,
                       "search_space": {**{k: {"grid": v} for k, v in grid.items()}, SEED_KEY: {"grid": seeds}}}
        out[variant] = (curate_cfg, validate_config(raw))
    return out


def study_fingerprint(study: Study, configs: dict[str, tuple[RayloraConfig, RayloraConfig]]) -> str:
    payload = json.dumps([study.model_dump(mode="json"),
                          {v: search.public_dump() for v, (_, search) in configs.items()}], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def trial_rows(variant: str, trials: list[dict[str, Any]], grid: dict[str, list]) -> list[dict[str, Any]]:
    """One row per trial of one variant's search: the variant, grid point, seed, and its TrainResult's final
    metrics."""
    rows = []
    for trial in trials:
        point = trial["params"]
        metrics = TrainResult.read(trial["train_result"]).metrics if trial["train_result"] else {}
        # every trial of a study's fifo grid trains to the end, unless it failed or the search was interrupted
        error = trial["error"] or (None if trial["train_result"] else f"stopped at step {trial['steps']}")
        rows.append({VARIANT_KEY: variant, **{k: point[k] for k in grid}, "seed": point[SEED_KEY],
                     "metrics": metrics, "error": error})
    return sorted(rows, key=lambda r: ([grid[k].index(r[k]) for k in grid], r["seed"]))  # in the grid's order


def resolve(selector: dict[str, Any], axes: dict[str, list]) -> dict[str, Any]:
    """$max / $min become the largest / smallest value of that key in the (scaled) grid."""
    extreme = {LARGEST: max, SMALLEST: min}
    return {k: extreme[v](axes[k]) if v in extreme else v for k, v in selector.items()}


def side_value(selectors: list[dict[str, Any]], rows: list[dict[str, Any]], seed: int, metric: str) -> float | None:
    """The sum over the side's points of the metric at ``seed``; a key a selector leaves open is averaged
    over. None when a point has no value (a failed trial, a metric not reported)."""
    total = 0.0
    for selector in selectors:
        values = [r["metrics"].get(metric) for r in rows
                  if r["seed"] == seed and all(r.get(k) == v for k, v in selector.items())]
        if not values or any(v is None for v in values):
            return None
        total += sum(values) / len(values)
    return total


def judge_claim(claim: Claim, rows: list[dict[str, Any]], axes: dict[str, list], seeds: list[int]) -> dict[str, Any]:
    a, b = ([resolve(s, axes) for s in side] for side in claim.sides)
    per_seed = {}
    for seed in seeds:
        va, vb = side_value(a, rows, seed, claim.metric), side_value(b, rows, seed, claim.metric)
        if va is not None and vb is not None:
            per_seed[seed] = va - vb
    return {**claim_verdict(claim.statement, claim.metric, claim.expect, claim.tolerance, per_seed),
            "a": a, "b": b, "seeds_missing": [s for s in seeds if s not in per_seed]}


def run_study(study: Study, cfg: RayloraConfig, reduced: bool = False,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``study`` on CONFIG's model and data; returns the verdict (also ``studies/NAME/verdict.json``).
    ``overrides``: the dotted keys given on the command line (already in ``cfg``), which win over the
    study's settings and may not touch what it varies."""
    from pipelines.curate import curate
    from pipelines.tune import check_search, tune

    overrides = overrides or {}
    check_overrides(study, overrides)
    grid = study.scaled_grid(hidden_size(cfg), reduced)
    seeds = study.run_seeds(reduced)
    configs = search_configs(study, cfg, grid, seeds, reduced, overrides)
    for _, search_cfg in configs.values():
        check_search(search_cfg)
    out_dir = cfg.path("studies", study.name).resolve()
    fingerprint = study_fingerprint(study, configs)
    verdict_path = out_dir / "verdict.json"
    if verdict_path.is_file() and (done := json.loads(verdict_path.read_text())).get("fingerprint") == fingerprint:
        say(f"{study.name} ({fingerprint}) already ran: {done['verdict']}; {out_dir}")
        return done
    for line in replaced_settings(study, overrides, reduced):
        say(line)
    trials = len(configs) * len(seeds) * math.prod(len(values) for values in grid.values())
    say(f"{study.name}: {study.title}; {trials} trials ({len(configs)} search(es) over {grid} x seeds {seeds})"
        + (" [reduced]" if reduced else ""))
    study_run = tracking.open_run(cfg.tracking_uri, cfg.tracking.experiment, f"study-{study.name}", "study",
                                  fingerprint=fingerprint, tags={"raylora.study": study.name},
                                  params={"study": study.model_dump(mode="json"), "reduced": reduced})
    rows, searches = [], {}
    try:
        for variant, (curate_cfg, search_cfg) in configs.items():
            manifest = curate(curate_cfg)
            result = tune(search_cfg, manifest)
            tracking.client(cfg.tracking_uri).set_tag(result.mlflow_run_id, tracking.PARENT_RUN_TAG, study_run)
            searches[variant or "config"] = result.mlflow_run_id
            rows += trial_rows(variant, result.trials, grid)
        axes = {**grid, **({VARIANT_KEY: list(configs)} if study.data else {})}
        claims = [judge_claim(claim, rows, axes, seeds) for claim in study.claims]
    except Exception:
        tracking.fail_run(cfg.tracking_uri, study_run)
        raise
    verdict = {"study": study.name, "title": study.title, "source": study.source, "reduced": reduced,
               "verdict": overall([c["verdict"] for c in claims]), "claims": claims, "grid": grid, "seeds": seeds,
               "base_model": cfg.model.base, "fingerprint": fingerprint, "mlflow_run_id": study_run,
               "searches": searches}
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = sorted({c.metric for c in study.claims} | {"eval_loss"})
    table = table_markdown(rows, list(grid), metrics, with_data=bool(study.data))
    (out_dir / "table.md").write_text(table)
    plot_claims(rows, claims, list(grid), out_dir / "plot.png", with_data=bool(study.data))
    verdict_path.write_text(json.dumps(verdict, indent=2, sort_keys=True) + "\n")
    tracking.client(cfg.tracking_uri).set_tag(study_run, "raylora.verdict", verdict["verdict"])
    tracking.finish_run(cfg.tracking_uri, study_run, step=0, artifacts={"study": out_dir},
                        metrics={f"claim{i}_mean_difference": c["mean"] for i, c in enumerate(claims)
                                 if c["mean"] is not None})
    print("\n" + table, flush=True)
    for claim in claims:
        say(f"{claim['verdict']:>12}  {claim['statement']} ({claim['metric']}: {claim['why']})")
    say(f"{study.name}: {verdict['verdict']}; table, plot and verdict in {out_dir}")
    return verdict
