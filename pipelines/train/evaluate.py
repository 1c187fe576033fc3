"""Evaluation: loss and perplexity over the eval rows, greedy exact match on the first few.

Every rank takes a share of the rows and the sums are all-reduced; runs without Ray too (one process).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pipelines.train.data import IGNORE_INDEX, end_of_turn_id, eval_example, pack_examples, render


def dist_sum(values: list[float]) -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def rank_chunks(rows: list[dict], rank: int, world_size: int, batch_size: int) -> list[tuple[list[dict], float]]:
    """This rank's share of ``rows`` in batches, padded with zero-weight repeats so that every rank runs the
    same number of forward passes (ZeRO-3 gathers parameters collectively on every forward)."""
    mine = rows[rank::world_size]
    per_rank = math.ceil(math.ceil(len(rows) / world_size) / batch_size)
    chunks = [(mine[i:i + batch_size], 1.0) for i in range(0, len(mine), batch_size)]
    filler = rows[:batch_size]
    return chunks + [(filler, 0.0)] * (per_rank - len(chunks))


def answer_prompt(messages: list[dict]) -> tuple[list[dict], str]:
    """Split a conversation into the prompt (everything before the last assistant turn) and that answer."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def evaluate(model: torch.nn.Module, tokenizer: Any, rows: list[dict], *, seq_len: int, batch_size: int,
             max_new_tokens: int, generate_limit: int | None, responses_only: bool = True, rank: int = 0,
             world_size: int = 1, synced: bool = False) -> dict[str, float]:
    """Eval loss and perplexity over ``rows``, and greedy exact-match accuracy over the first
    ``generate_limit`` conversations (the generated answer against the last assistant message); a plain-text
    row (``{"text": ...}``) counts every token in the loss and is never generated from. Every rank takes a
    share; the sums are all-reduced. ``synced`` keeps ranks in step while generating (ZeRO-3). A metric
    with nothing to average (no answer token, no scored row) is left out, never reported as 0."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    loss_sum, token_count = 0.0, 0.0
    with torch.no_grad():
        for chunk, weight in rank_chunks(rows, rank, world_size, batch_size):
            examples = [eval_example(r, tokenizer, responses_only) for r in chunk]
            longest = min(seq_len, max(len(e.input_ids) for e in examples))
            blocks = list(pack_examples(examples, longest, pad_id, packing=False, drop_no_answer=False))
            labels = torch.tensor([b.labels for b in blocks], device=device)
            logits = model(input_ids=torch.tensor([b.input_ids for b in blocks], device=device),
                           position_ids=torch.tensor([b.position_ids for b in blocks], device=device),
                           use_cache=False).logits
            shifted = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted,
                                                       ignore_index=IGNORE_INDEX, reduction="sum")
            loss_sum += weight * losses.item()
            token_count += weight * (shifted != IGNORE_INDEX).sum().item()
        conversations = [r for r in rows if "messages" in r]  # plain text has no answer to match
        scored_rows = conversations if generate_limit is None else conversations[:generate_limit]
        correct, scored = (exact_match(model, tokenizer, scored_rows, batch_size, max_new_tokens, rank,
                                        world_size, synced) if scored_rows else (0.0, 0.0))
    loss_sum, token_count, correct, scored = dist_sum([loss_sum, token_count, correct, scored])
    model.train(was_training)
    metrics = {}
    if token_count > 0:  # a mean over zero tokens is no number: the key is left out, never 0.0
        metrics["eval_loss"] = loss_sum / token_count
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    if scored > 0:
        metrics["eval_exact_match"] = correct / scored
    return metrics


def exact_match(model: torch.nn.Module, tokenizer: Any, rows: list[dict], batch_size: int, max_new_tokens: int,
                 rank: int, world_size: int, synced: bool) -> tuple[float, float]:
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    # an answer ends with the template's end-of-turn token, which a base given a template does not call EOS
    stop_ids = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    correct, scored = 0.0, 0.0
    for chunk, weight in rank_chunks(rows, rank, world_size, batch_size):
        prompts, answers = zip(*(answer_prompt(r["messages"]) for r in chunk), strict=True)
        texts = [render(tokenizer, list(p), generation_prompt=True) for p in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=synced,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids)
        generated = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += weight * sum(g.strip() == a.strip() for g, a in zip(generated, answers, strict=True))
        scored += weight * len(chunk)
    return correct, scored
