"""Decontamination: drop training rows that hold text of an eval set item.

    raylora curate configs/demo.yaml curate.decontaminate_ngram=8     # data.eval_sets name the eval files

The eval items are indexed once on the driver (the sets are small): a long item by its word n-grams, a
short one (fewer than n words) by its whole word sequence. A row is ``contaminated`` when it shares an
n-gram with a long item or holds a short item contiguously; ``ContaminationFilter`` is that check as the
last filter of the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pipelines.curate.filters import Filter, Messages, words
from pipelines.curate.formats import MalformedRecord, parse_line, to_messages
from pipelines.curate.reasons import CONTAMINATED


@dataclass
class EvalIndex:
    """Word n-grams of the long eval items and whole word sequences of the short ones."""

    n: int
    ngrams: set[str] = field(default_factory=set)
    short_items: dict[int, set[str]] = field(default_factory=dict)  # length in words -> item word sequences

    def add(self, item_words: Sequence[str]) -> None:
        if not item_words:
            return
        if len(item_words) < self.n:
            self.short_items.setdefault(len(item_words), set()).add(" ".join(item_words))
        else:
            self.ngrams.update(" ".join(item_words[i:i + self.n]) for i in range(len(item_words) - self.n + 1))

    def __len__(self) -> int:
        return len(self.ngrams) + sum(len(items) for items in self.short_items.values())


def eval_item_words(messages: Sequence[dict[str, str]]) -> list[str]:
    """The normalised words decontamination compares: prompts and answers, not the system turn."""
    return words(" ".join(m["content"] for m in messages if m["role"] != "system"))


def build_eval_index(eval_paths: Sequence[str], n: int) -> EvalIndex:
    """Index eval JSONL files (``{"messages": [...]}`` or plain ``{"text": ...}`` per line). Small: built on the
    driver."""
    import fsspec

    index = EvalIndex(n)
    for path in eval_paths:
        with fsspec.open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = parse_line(raw)
                    if isinstance(record, dict) and isinstance(record.get("text"), str):
                        index.add(words(record["text"]))
                        continue
                    index.add(eval_item_words(to_messages(record)))
                except MalformedRecord as err:
                    raise ValueError(f"eval set {path} line {number}: {err}") from err
    return index


def is_contaminated(messages: Sequence[dict[str, str]], index: EvalIndex) -> bool:
    """True when the row holds a whole short eval item (contiguously) or shares an n-gram with a long one."""
    tokens = eval_item_words(messages)
    for length, items in index.short_items.items():
        if any(" ".join(tokens[i:i + length]) in items for i in range(len(tokens) - length + 1)):
            return True
    n = index.n
    return bool(index.ngrams) and any(" ".join(tokens[i:i + n]) in index.ngrams
                                      for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class ContaminationFilter(Filter):
    """Drops a conversation that holds text of an eval item in ``index``."""

    name: ClassVar[str] = "decontaminate"
    reason: ClassVar[str] = CONTAMINATED
    index: EvalIndex

    def keeps(self, messages: Messages) -> bool:
        return not is_contaminated(messages, self.index)
