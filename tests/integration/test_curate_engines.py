"""Curation on Ray Data and as one plain Python loop over the same functions keep the same rows (issue 12):
the benchmark compares engines, and the manifest's split hashes are those of the files written."""

from __future__ import annotations

import contextlib
import io
import json

import pyarrow.parquet as pq
import yaml

from pipelines.artifacts import MANIFEST_FILE, DatasetManifest
from pipelines.bench.curate import make_bench_data, plain_loop_curate
from pipelines.cli import EXIT_OK, main
from pipelines.config import RayloraConfig
from pipelines.curate.reasons import EXACT_DUPLICATE, NEAR_DUPLICATE
from pipelines.curate.split import split_hash

QUESTION = "Explain why the sky looks blue during the day but red and orange at sunset."
ANSWER = ("Air scatters the short blue waves of sunlight far more than the long red ones, so blue reaches us "
          "from all over the sky by day. At sunset the light crosses much more air and most blue is lost.")


def test_ray_and_the_plain_loop_keep_the_same_rows_and_the_manifest_hashes_what_was_written(
        ray_local, demo_config_base, sample_data, tmp_path):
    paths = make_bench_data(tmp_path / "data", 3_000, seed=0)
    chain = tmp_path / "data" / "chain.jsonl"  # an answer and two rewordings of it: one cluster keeps the first
    words = ANSWER.split()
    chain.write_text("".join(json.dumps({"messages": [{"role": "user", "content": QUESTION},
                                                      {"role": "assistant", "content": " ".join(answer)}]}) + "\n"
                             for answer in (words, [*words[2:], "Simple."], [*words[4:], "Simple.", "Really."])))
    raw = {**demo_config_base, "workdir": str(tmp_path / "work"),
           "data": {**demo_config_base["data"],
                    "sources": [{"path": str(path), "format": path.stem} for path in paths]
                    + [{"path": str(chain), "format": "openai"}]}}
    cfg = RayloraConfig.model_validate(raw)
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(raw))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["curate", str(tmp_path / "bench.yaml")]) == EXIT_OK
    manifest = DatasetManifest.read(cfg.path(cfg.curate.output_dir) / MANIFEST_FILE)

    assert (manifest.train_hash, manifest.eval_hash) == (split_hash(manifest.train_paths),
                                                         split_hash(manifest.eval_paths))
    loop = plain_loop_curate(cfg.model_dump(mode="json"))
    assert (manifest.num_train + manifest.num_eval, manifest.train_hash, manifest.eval_hash) == (
        loop["kept"], loop["hashes"]["train"], loop["hashes"]["eval"])
    assert manifest.dropped_by_reason == loop["dropped_by_reason"]
    assert manifest.num_read == loop["read"] == 3_003
    assert manifest.dropped_by_reason[EXACT_DUPLICATE] > 0
    near = pq.read_table(manifest.dropped_paths, filters=[("reason", "=", NEAR_DUPLICATE)]).to_pylist()
    assert sorted((row["id"], row["detail"]) for row in near) == [("chain:2", "duplicate of chain:1"),
                                                                   ("chain:3", "duplicate of chain:1")]
