"""The one summary at the end of ``raylora run``: what was kept, what the search found, how the adapter scores,
where it is registered, and where to look. Built from the stages' artifacts only, so a rerun that skips every
stage prints the same one."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

from pipelines.artifacts import Artifact, DatasetManifest, Registration, TrainResult, TuneResult
from pipelines.config import RayloraConfig

RUN_SUMMARY_FILE = "run_summary.json"
REASONS_SHOWN = 6


@dataclasses.dataclass(frozen=True)
class RunSummary(Artifact):
    run_name: str
    data: dict[str, Any]  # read, train, eval, dropped, dropped_by_reason
    search: dict[str, Any] | None  # trials, stopped_early, errors, best_trial, best_params; None: one train run
    adapter: dict[str, Any]  # path, mlflow_run_id (of its train run), metrics (its eval metrics)
    registration: dict[str, Any]  # model_name, version, aliases, promoted, champion_version, reason
    plots: list[str]
    tracking_uri: str
    output_dir: str


def summarize(cfg: RayloraConfig, manifest: DatasetManifest, tuned: TuneResult | None, trained: TrainResult,
              registration: Registration, plots: list[Path]) -> RunSummary:
    search = None
    if tuned is not None:
        search = {"trials": len(tuned.trials),
                  "stopped_early": sum(bool(t.get("stopped_early")) for t in tuned.trials),
                  "errors": sum(bool(t.get("error")) for t in tuned.trials),
                  "best_trial": tuned.best_trial["trial_id"], "best_params": tuned.best_trial["params"]}
    return RunSummary(
        run_name=cfg.run_name,
        data={"read": manifest.num_read, "train": manifest.num_train, "eval": manifest.num_eval,
              "dropped": manifest.num_dropped, "dropped_by_reason": manifest.dropped_by_reason},
        search=search,
        adapter={"path": trained.adapter_path, "mlflow_run_id": trained.mlflow_run_id,
                 "metrics": {k: v for k, v in trained.metrics.items() if k.startswith("eval_")}},
        registration={"model_name": registration.model_name, "version": registration.version,
                      "aliases": registration.aliases, "promoted": registration.promoted,
                      "champion_version": registration.champion_version, "reason": registration.reason},
        plots=[str(Path(p).resolve()) for p in plots],
        tracking_uri=cfg.tracking_uri,
        output_dir=str(cfg.path("").resolve()),
    )


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_summary(summary: RunSummary) -> str:
    data, reg = summary.data, summary.registration
    reasons = sorted(data["dropped_by_reason"].items(), key=lambda item: (-item[1], item[0]))
    shown = ", ".join(f"{reason} {count}" for reason, count in reasons[:REASONS_SHOWN])
    more = f", {len(reasons) - REASONS_SHOWN} more reasons" if len(reasons) > REASONS_SHOWN else ""
    lines = [f"== raylora run {summary.run_name}: summary",
             f"data      read {data['read']}: kept {data['train'] + data['eval']} (train {data['train']}, "
             f"eval {data['eval']}), dropped {data['dropped']}" + (f" ({shown}{more})" if shown else "")]
    if summary.search is not None:
        s = summary.search
        params = " ".join(f"{k}={format_value(v)}" for k, v in sorted(s["best_params"].items()))
        lines.append(f"search    {s['trials']} trials ({s['stopped_early']} stopped early, {s['errors']} failed); "
                     f"best {s['best_trial']}: {params}")
    else:
        lines.append("search    none (tune.enabled is false or --skip-tune): one train run")
    metrics = ", ".join(f"{k} {format_value(v)}" for k, v in sorted(summary.adapter["metrics"].items()))
    lines.append(f"adapter   {summary.adapter['path']}")
    lines.append(f"eval      {metrics or 'none (train.eval is false)'}")
    champion = reg["champion_version"]
    lines.append(f"registry  {reg['model_name']} version {reg['version']} ({', '.join(reg['aliases']) or 'no alias'}); "
                 + (f"champion is this version: {reg['reason']}" if reg["promoted"]
                    else f"champion stays {f'version {champion}' if champion else 'unset'}: {reg['reason']}"))
    lines += [f"plot      {plot}" for plot in summary.plots]
    uri = summary.tracking_uri
    look = f"open {uri}" if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
    lines.append(f"look      {look}   (output folder {summary.output_dir})")
    return "\n".join(lines)
