"""The prepared dataset: built once per key, reused after, rebuilt when the key changes; its batches are the
batches that tokenising the curated rows in the worker gives."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from pipelines.artifacts import DatasetManifest
from pipelines.config import validate_config
from pipelines.train.data import train_batches
from pipelines.train.prepared import PREPARED_MANIFEST, PreparedRows, prepare_dataset, prepared_batches

CHATS = [
    [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse a b c."},
     {"role": "assistant", "content": "c b a"}],
    [{"role": "user", "content": "Sort 9 2 5."}, {"role": "assistant", "content": "2 5 9"},
     {"role": "user", "content": "And 4 1?"}, {"role": "assistant", "content": "1 4"}],
]


@pytest.fixture
def small_curated(tmp_path) -> DatasetManifest:
    """Two curated Parquet files (prepared in their order) of 90 rows."""
    paths = []
    for part in range(2):
        rows = [{"id": f"p{part}-{i}", "source": "t", "messages": CHATS[i % 3]} for i in range(45)]
        paths.append(str(tmp_path / f"train-{part}.parquet"))
        pq.write_table(pa.Table.from_pylist(rows), paths[-1])
    return DatasetManifest(train_paths=paths, eval_paths=[], dropped_paths=[], num_read=90, num_train=90, num_eval=0,
                           num_dropped=0, dropped_by_reason={}, per_source={}, train_hash="h1", eval_hash="e1",
                           config={})


def config(demo_config_dict, **train):
    return validate_config({**demo_config_dict, "train": {**demo_config_dict["train"], **train}})


def test_a_second_run_reuses_the_prepared_dataset_and_a_changed_key_rebuilds_it(
        demo_config_dict, small_curated, tiny_model_path, capsys):
    cfg = config(demo_config_dict)
    first = prepare_dataset(cfg, small_curated, str(tiny_model_path))
    assert "prepared 90 train rows" in capsys.readouterr().out
    built_at = (first / PREPARED_MANIFEST).stat().st_mtime_ns
    assert prepare_dataset(cfg, small_curated, str(tiny_model_path)) == first
    assert capsys.readouterr().out == "" and (first / PREPARED_MANIFEST).stat().st_mtime_ns == built_at

    # what changes the tokens changes the key; what does not (the sequence length, the learning rate) does not
    assert prepare_dataset(config(demo_config_dict, lr=0.5), small_curated, str(tiny_model_path)) == first
    longer = cfg.model_copy(update={"model": cfg.model.model_copy(update={"max_seq_len": 512})})
    assert prepare_dataset(longer, small_curated, str(tiny_model_path)) == first
    changed = [
        config(demo_config_dict, train_on_responses_only=False),
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"chat_template": "chatml"})}),
    ]
    directories = {prepare_dataset(c, small_curated, str(tiny_model_path)) for c in changed}
    directories.add(prepare_dataset(cfg, dataclasses.replace(small_curated, train_hash="h2"), str(tiny_model_path)))
    assert len(directories) == 3 and first not in directories
    key = json.loads((first / PREPARED_MANIFEST).read_text())
    assert key["rows"] == 90 and key["key"]["train_hash"] == "h1" and key["key"]["responses_only"] is True


@pytest.mark.parametrize(("world_size", "packing"), [(1, True), (2, True), (3, True), (2, False)])
def test_prepared_batches_equal_the_batches_of_the_curated_rows(demo_config_dict, small_curated, tiny_model_path,
                                                                world_size, packing):
    """Same shard, same seeded order, same packing: a resumed run or a row-count check on the curated rows
    sees exactly what the worker trains on."""
    cfg = config(demo_config_dict)
    prepared = PreparedRows.open(prepare_dataset(cfg, small_curated, str(tiny_model_path)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    rows = [r for path in small_curated.train_paths for r in pq.read_table(path).to_pylist()]
    for rank in range(world_size):
        kwargs = dict(seq_len=64, micro_batch_size=2, rank=rank, world_size=world_size, seed=7, packing=packing)
        expected = list(train_batches(rows, tokenizer, **kwargs))
        got = list(prepared_batches(prepared, **kwargs))
        assert len(got) == len(expected) > 0
        for a, b in zip(got, expected, strict=True):
            assert a["row_ids"] == b["row_ids"]
            assert all(a[k].tolist() == b[k].tolist() for k in ("input_ids", "labels", "position_ids"))
