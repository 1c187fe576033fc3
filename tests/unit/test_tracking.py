"""The one MLflow module, on a real SQLite store: runs continue by name, the metric logger writes on rank 0 only."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipelines import tracking


def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_an_unfinished_run_is_continued_and_a_finished_one_is_not(tmp_path):
    uri = store(tmp_path)
    params = {"train": {"lr": 0.001, "optimizer": "adamw"}, "run_name": "a"}
    first = tracking.open_run(uri, "exp", "a", "train", fingerprint="f1", tags={"train_hash": "abc"},
                              params=params)
    assert tracking.open_run(uri, "exp", "a", "train", fingerprint="f1", tags={}, params=params) == first
    assert tracking.open_run(uri, "exp", "a", "train", fingerprint="f2", tags={}, params=params) != first
    run = MlflowClient(uri).get_run(first)
    assert run.data.params == {"train.lr": "0.001", "train.optimizer": "adamw", "run_name": "a"}
    assert run.data.tags[tracking.RUN_NAME_TAG] == "a" and run.data.tags["train_hash"] == "abc"
    assert run.data.tags[tracking.FINGERPRINT_TAG] == "f1" and run.info.run_name == "a-f1"

    tracking.finish_run(uri, first, metrics={"eval_loss": 1.5}, step=7)
    finished = MlflowClient(uri).get_run(first)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics == {"final_eval_loss": 1.5}
    assert tracking.open_run(uri, "exp", "a", "train", fingerprint="f1", tags={}, params=params) != first


def test_metric_logger_writes_batches_on_rank_zero_only(tmp_path):
    uri = store(tmp_path)
    run_id = tracking.open_run(uri, "exp", "m", "train", fingerprint="f", tags={}, params={})
    main, other = tracking.MetricLogger(uri, run_id, rank=0, every=3), tracking.MetricLogger(uri, run_id, rank=1)
    for step in range(1, 5):
        main.log_dict({"train_loss": 1.0 / step}, step)
        other.log_dict({"train_loss": 99.0}, step)
    assert [s for s, _ in tracking.metric_history(uri, run_id, "train_loss")] == [1, 2, 3], "a batch of 3 flushed"
    main.log("lr", 0.5, 4)
    main.close()
    other.close()
    assert tracking.metric_history(uri, run_id, "train_loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    assert tracking.metric_history(uri, run_id, "lr") == [(4, 0.5)]


def test_flat_params_flattens_sections_and_cuts_long_values():
    flat = tracking.flat_params({"a": {"b": {"c": 1}}, "long": "x" * 600})
    assert flat == {"a.b.c": "1", "long": "x" * tracking.MAX_PARAM_CHARS}
