"""`raylora run`: the whole pipeline as one command; a rerun skips what is current (issue 16).

    PYTHONPATH=$PWD python -m pytest tests/integration/test_run.py -q
"""

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient
from planted import PLANTED_SECRET, RUNTIME_ENV_WITH_SECRET, files_holding

from pipelines.cli import EXIT_OK, main
from pipelines.config import validate_config
from pipelines.run import RUN_SUMMARY_FILE, RunSummary


def head(path, lines, out):
    out.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:lines]) + b"\n")
    return str(out)


def summary_block(printed: str) -> str:
    """What `raylora run` prints from its summary's first line on."""
    return printed[printed.index("== raylora run"):]


@pytest.fixture(scope="module")
def small_run(ray_train, demo_config_base, sample_data, tmp_path_factory):
    """A small config: 250 rows of each sample source, one short train run (no search), the register gate."""
    root = tmp_path_factory.mktemp("run")
    raw = {**json.loads(json.dumps(demo_config_base)), "workdir": str(root / "work"), "run_name": "whole"}
    raw["data"]["sources"] = [{"path": head(sample_data[fmt], 250, root / f"{fmt}.jsonl"), "format": fmt}
                              for fmt in ("alpaca", "sharegpt", "openai")]
    raw["model"]["max_seq_len"] = 128
    raw["train"].update(max_steps=6, micro_batch_size=8, eval_every=6, checkpoint_every=6, eval_generate_limit=4,
                        eval_max_new_tokens=4)
    raw["tune"]["enabled"] = False
    raw["register"].update(model_name="whole-pipeline", max_new_tokens=8)
    raw["cluster"]["runtime_env"] = RUNTIME_ENV_WITH_SECRET
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, raw


def run(config, capsys, *overrides):
    assert main(["run", str(config), *overrides]) == EXIT_OK
    return capsys.readouterr().out


def test_a_second_run_skips_every_stage_and_an_edit_reruns_only_what_it_reaches(small_run, capsys):
    config, raw = small_run
    cfg = validate_config(raw)
    first = run(config, capsys)
    for stage in ("[1/3] curate", "[2/3] train", "[3/3] register"):
        assert f"== {stage}" in first
    summary = RunSummary.read(cfg.path("run", "whole", RUN_SUMMARY_FILE))
    data = summary.data
    assert data["read"] == 750 and data["train"] + data["eval"] + data["dropped"] == 750
    assert summary.search is None and summary.registration["version"] == "1"
    assert summary.registration["promoted"] and "champion" in summary.registration["aliases"]
    assert summary.adapter["metrics"]["eval_loss"] > 0
    names = sorted(p.rsplit("/", 1)[-1] for p in summary.plots)
    assert names == ["curation_funnel.png", "training_curves.png"]
    for plot in summary.plots:
        with open(plot, "rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"plot      {plot}" in first
    assert f"mlflow ui --backend-store-uri {cfg.tracking_uri}" in first
    client = MlflowClient(cfg.tracking_uri)
    logged = {a.path for a in client.list_artifacts(summary.adapter["mlflow_run_id"], "plots")}
    assert logged == {"plots/curation_funnel.png", "plots/training_curves.png"}
    # the token the config hands the job is nowhere in what the run wrote: params, results, lineage, registry
    assert files_holding(PLANTED_SECRET, cfg.path()) == []
    assert client.get_run(summary.adapter["mlflow_run_id"]).data.params["cluster.runtime_env.env_vars.HF_TOKEN"] \
        == "***"

    second = run(config, capsys)
    assert "already holds the curation of these inputs" in second
    assert "already finished at step 6" in second
    assert "is already version 1 of whole-pipeline" in second
    assert summary_block(second) == summary_block(first)
    assert [str(v.version) for v in client.search_model_versions("name = 'whole-pipeline'")] == ["1"]

    edited = run(config, capsys, "train.lr=5e-4")
    assert "already holds the curation of these inputs" in edited  # curation does not read train.lr
    assert "already finished" not in edited and "config changed since run" in edited
    assert "train.lr: 0.001 -> 0.0005" in edited
    assert RunSummary.read(cfg.path("run", "whole", RUN_SUMMARY_FILE)).registration["version"] == "2"

    # a changed source file is new input: curation runs again, though no config key changed
    source = raw["data"]["sources"][0]["path"]
    with open(source, "a") as extra:
        extra.write(json.dumps({"instruction": "Name the capital of France.", "input": "", "output": "Paris."}) + "\n")
    assert main(["curate", str(config)]) == EXIT_OK
    assert "already holds the curation" not in capsys.readouterr().out
    assert json.loads(cfg.path("curated", "manifest.json").read_text())["num_read"] == 751
