"""Chat-template tokenisation, response-only masks, packing and deterministic sharding of train data."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.train.data import (
    IGNORE_INDEX,
    Example,
    PackingStats,
    batches,
    pack_examples,
    shard_rows,
    shuffled,
    stable_shard,
    tokenize_chat,
    train_batches,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "7"}, {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_only_assistant_tokens_carry_labels(tokenizer):
    example = tokenize_chat(CHAT, tokenizer)
    labelled = [tok for tok in example.labels if tok != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "7<|end|>2<|end|>"  # both answers, every prompt token masked
    full = tokenize_chat(CHAT, tokenizer, responses_only=False)
    assert full.labels[0] == IGNORE_INDEX and full.labels[1:] == full.input_ids[1:]


def test_a_template_without_generation_marks_is_refused_with_the_fix(tokenizer):
    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="train_on_responses_only=false"):
        tokenize_chat(CHAT, plain)


def _example(n: int, start: int) -> Example:
    ids = list(range(start, start + n))
    return Example(input_ids=ids, labels=[IGNORE_INDEX] + ids[1:])


def test_packing_fills_blocks_resets_positions_and_counts_efficiency():
    stats = PackingStats()
    blocks = list(pack_examples([_example(4, 10), _example(3, 20), _example(5, 30), _example(9, 40)], seq_len=8,
                                pad_id=0, stats=stats))
    assert [b.input_ids for b in blocks] == [[10, 11, 12, 13, 20, 21, 22, 0], [30, 31, 32, 33, 34, 0, 0, 0],
                                             [40, 41, 42, 43, 44, 45, 46, 47]]
    assert blocks[0].position_ids == [0, 1, 2, 3, 0, 1, 2, 0]
    assert blocks[0].labels == [IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 21, 22, IGNORE_INDEX]
    assert stats.truncated == 1 and stats.examples == 4
    assert stats.efficiency == pytest.approx((7 + 5 + 8) / 24)
    unpacked = list(pack_examples([_example(4, 10), _example(3, 20)], seq_len=8, pad_id=0, packing=False))
    assert len(unpacked) == 2 and unpacked[1].input_ids == [20, 21, 22, 0, 0, 0, 0, 0]


def test_packed_examples_do_not_attend_to_each_other(tokenizer, tiny_model_path):
    """Logits of an example packed after another equal its logits alone: the position-id reset isolates it."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    first = tokenize_chat(CHAT[:3], tokenizer)
    second = tokenize_chat(CHAT[3:], tokenizer)
    (block,) = pack_examples([first, second], seq_len=64, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=torch.tensor([block.input_ids]), position_ids=torch.tensor([block.position_ids]),
                       use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([second.input_ids]), use_cache=False).logits[0]
    start = len(first.input_ids)
    assert torch.allclose(packed[start:start + len(second.input_ids)], alone, atol=1e-4)


def test_batches_stack_and_drop_the_short_tail():
    blocks = list(pack_examples([_example(3, i * 10) for i in range(5)], seq_len=4, pad_id=0))
    out = list(batches(blocks, micro_batch_size=2))
    assert len(out) == 2 and out[0]["input_ids"].shape == (2, 4)
    assert set(out[0]) == {"input_ids", "labels", "position_ids", "row_ids"}
    assert out[0]["row_ids"] == [[""], [""]], "one (unnamed) row packed into each block"


def test_shards_are_disjoint_complete_and_stable():
    rows = [{"id": f"row-{i}"} for i in range(200)]
    shards = [[r["id"] for r in shard_rows(rows, rank, 3)] for rank in range(3)]
    assert sorted(sum(shards, [])) == sorted(r["id"] for r in rows)
    assert all(len(s) > 40 for s in shards)
    assert shards == [[r["id"] for r in shard_rows(rows, rank, 3)] for rank in range(3)]
    # pinned values: a per-process hash (Python's hash()) would pass the line above but split data differently
    # on each worker
    assert [stable_shard(f"row-{i}", 3) for i in range(5)] == [2, 2, 1, 2, 1]


def test_shuffle_is_seeded_and_keeps_every_row():
    rows = [{"id": str(i)} for i in range(50)]
    a = [r["id"] for r in shuffled(rows, seed=1, buffer_size=8)]
    assert a == [r["id"] for r in shuffled(rows, seed=1, buffer_size=8)]
    assert a != [r["id"] for r in shuffled(rows, seed=2, buffer_size=8)] and sorted(a) == sorted(r["id"] for r in rows)


def test_train_batches_end_to_end(tokenizer):
    rows = [{"id": f"r{i}", "messages": CHAT[1:3]} for i in range(40)]
    stats = PackingStats()
    out = list(train_batches(rows, tokenizer, seq_len=64, micro_batch_size=2, stats=stats))
    assert out and all(b["input_ids"].shape == (2, 64) for b in out)
    assert 0.8 < stats.efficiency <= 1.0
