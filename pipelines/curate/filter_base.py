"""The shape every curation filter shares: a named check over one conversation that returns ``(keep, reason)``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from pipelines.curate.reasons import (
    KEPT,
)

Messages = Sequence[dict[str, str]]
Verdict = tuple[bool, str]
KEEP: Verdict = (True, KEPT)

WORD = re.compile(r"\w+", re.UNICODE)


def answers(messages: Messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def words(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation and symbols are not words."""
    return WORD.findall(text.lower())


def conversation_text(messages: Messages) -> str:
    return "\n".join(m["content"] for m in messages)


class Filter:
    """One named check on a conversation and the reason a row it drops is counted under.

    Subclasses set ``name`` and ``reason`` and implement ``keeps``; calling the filter gives the verdict.
    """

    name: ClassVar[str]
    reason: ClassVar[str]

    def keeps(self, messages: Messages) -> bool:
        raise NotImplementedError

    def __call__(self, messages: Messages) -> Verdict:
        return KEEP if self.keeps(messages) else (False, self.reason)

    def reasons(self, conversations: Sequence[Messages]) -> list[str]:
        """The verdict on each of many conversations: ``KEPT`` or the reason it is dropped."""
        return [KEPT if self.keeps(messages) else self.reason for messages in conversations]
