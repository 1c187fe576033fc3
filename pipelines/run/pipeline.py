"""``raylora run``: every stage in order, each skipped with a line when its output for these inputs exists.

    raylora run configs/demo.yaml                # curate -> tune (its best trial is the adapter) -> register
    raylora run configs/demo.yaml --skip-tune    # curate -> one train run -> register

Each stage decides for itself whether its output is current: curation by the fingerprint of its inputs (config
and file contents), a search or a train run by its run fingerprint, a registration by the adapter's run
fingerprint and the gate set. So after an edit exactly the stages it reaches run again, and a second run in a
row runs none and prints the same summary. The artifacts pass from stage to stage as their JSON paths.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.artifacts import TrainResult
from pipelines.config import RayloraConfig
from pipelines.run.plots import curation_funnel, training_curves
from pipelines.run.summary import RUN_SUMMARY_FILE, RunSummary, format_summary, summarize

__all__ = ["RUN_SUMMARY_FILE", "RunSummary", "run_pipeline"]


@contextmanager
def stage(name: str, number: int, count: int, what: str) -> Iterator[None]:
    """One line when a stage starts and one when it ends, with its wall time: live per-stage progress."""
    print(f"== [{number}/{count}] {name}: {what}", flush=True)
    started = time.perf_counter()
    yield
    print(f"== [{number}/{count}] {name} done in {time.perf_counter() - started:.0f} s", flush=True)


def run_pipeline(cfg: RayloraConfig, skip_tune: bool = False) -> RunSummary:
    """Curate, search or train, register; returns the summary (also written as JSON and printed)."""
    from pipelines import tracking
    from pipelines.artifacts import tune_result_path
    from pipelines.curate import curate
    from pipelines.demo import build_demo_assets, needs_demo_assets
    from pipelines.register import register
    from pipelines.train import TRAIN_RESULT_FILE, train
    from pipelines.tune import tune

    searching = cfg.tune.enabled and not skip_tune
    if needs_demo_assets(cfg):
        print("== demo assets: writing the sample data and building the offline tiny model", flush=True)
        build_demo_assets(cfg)
    with stage("curate", 1, 3, "read the sources, filter, dedup, decontaminate, split"):
        manifest = curate(cfg)
    if searching:
        with stage("tune", 2, 3, f"search {', '.join(cfg.tune.search_space)} with Ray Tune, one train run a trial"):
            tuned = tune(cfg, manifest)
        source = tune_result_path(cfg)
        trained = TrainResult.read(tuned.best_train_result)
    else:
        tuned = None
        with stage("train", 2, 3, "train the adapter on Ray Train with DeepSpeed ZeRO"):
            trained = train(cfg, manifest)
        source = cfg.path("train", cfg.run_name, trained.fingerprint, TRAIN_RESULT_FILE)
    with stage("register", 3, 3, "register the adapter and gate the champion alias"):
        registration = register(cfg, source)

    out_dir = cfg.path("run", cfg.run_name)
    plots = [curation_funnel(manifest, out_dir / "curation_funnel.png")]
    if trained.mlflow_run_id:
        keys = ["train_loss", *sorted(key for key in trained.metrics if key.startswith("eval_"))]
        history = {key: tracking.metric_history(cfg.tracking_uri, trained.mlflow_run_id, key) for key in keys}
        plots.append(training_curves(history, out_dir / "training_curves.png"))
        tracking.log_files(cfg.tracking_uri, trained.mlflow_run_id, plots, "plots")
    if tuned is not None:
        tracking.log_files(cfg.tracking_uri, tuned.mlflow_run_id, plots, "plots")
        plots += [Path(p) for p in tuned.plots]
    summary = summarize(cfg, manifest, tuned, trained, registration, plots)
    summary.write(out_dir / RUN_SUMMARY_FILE)
    print(format_summary(summary), flush=True)
    return summary
