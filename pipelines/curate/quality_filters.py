"""Filters of what an answer is, beyond its length: placeholders, non-words, adequacy, echoes, refusals by a
classifier, relatedness to the instruction. ``filters.build_filters`` puts them in the chain."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from pipelines.curate import english
from pipelines.curate.filter_base import (
    Filter,
    Messages,
    answers,
    words,
)
from pipelines.curate.reasons import (
    CLASSIFIED_REFUSAL,
    ECHOED_PROMPT,
    INADEQUATE_ANSWER,
    KEPT,
    NON_WORDS,
    PLACEHOLDER,
    UNRELATED_ANSWER,
)


def exchanges(messages: Messages) -> list[tuple[str, str]]:
    """(prompt, answer) of each user turn and the assistant turn that follows it."""
    return [(prompt["content"], answer["content"]) for prompt, answer in zip(messages, messages[1:], strict=False)
            if prompt["role"] == "user" and answer["role"] == "assistant"]


def asked_so_far(messages: Messages) -> list[tuple[str, str]]:
    """(every user turn up to this exchange, answer) of each exchange: what a follow-up answer may draw on."""
    asked, pairs = [], []
    for prompt, answer in zip(messages, messages[1:], strict=False):
        if prompt["role"] == "user":
            asked.append(prompt["content"])
            if answer["role"] == "assistant":
                pairs.append(("\n".join(asked), answer["content"]))
    return pairs


def every_row(messages: Messages) -> bool:
    return True


# Stand-ins for an answer that was never written. Upper case only for the to-do words: "todo" is Spanish for "all"
PLACEHOLDER_MARKERS = re.compile(
    r"(?i:\blorem ipsum\b)|\b(?:TODO|TBD|FIXME|XXX)\b|\b[A-Z]+_PLACEHOLDER\b|\[[A-Z0-9 _/.-]{1,40}\]|"
    r"(?i:\[\s*(?:insert|add|your|enter|placeholder|fill in)\b[^\]]*\])|"
    r"(?i:<\s*(?:insert|your|enter|placeholder|fill in|answer|response)\b[^>]*>)|<!--.*?-->|"
    r"(?i:\{\{?\s*(?:answer|response|placeholder|insert|content)\b[^}]*\}\}?)|"
    r"(?i:\b(?:your|the) (?:answer|response|text|content|explanation) (?:goes )?here\b)")
# ... or the whole answer is a stand-in word, or only ellipses where the content should be ("Step 1: ...")
PLACEHOLDER_ANSWER = re.compile(
    r"^\W*(?:n/?a|null|nil|undefined|xxx+|tbd|todo|pending|(?:answer|response) (?:pending|to follow|tbd)|"
    r"placeholder|coming soon)\W*$", re.IGNORECASE)
ELLIPSIS = re.compile(r"\.\.\.|…")
LOREM_IPSUM = re.compile(r"\blorem ipsum\b", re.IGNORECASE)


def is_placeholder(answer: str, max_other_words: int) -> bool:
    """Lorem ipsum; a stand-in word for the whole answer; ellipses where every line's content should be; or
    placeholder markers with fewer than ``max_other_words`` other words, or three markers or more (a form
    letter of [NAME] and [COMPANY]). One marker in a real answer (a letter signed "[Your Name]") is not."""
    if LOREM_IPSUM.search(answer) or PLACEHOLDER_ANSWER.match(answer):
        return True
    lines = [line for line in answer.splitlines() if line.strip()]
    if lines and all(ELLIPSIS.search(line) and len(words(ELLIPSIS.sub(" ", line))) <= 3 for line in lines):
        return True
    markers = len(PLACEHOLDER_MARKERS.findall(answer))
    return markers >= 3 or (markers > 0 and len(words(PLACEHOLDER_MARKERS.sub(" ", answer))) < max_other_words)


@dataclass(frozen=True)
class PlaceholderFilter(Filter):
    """An answer that is a stand-in (``is_placeholder``): lorem ipsum, TODO, [insert ...], <answer>, N/A.
    A prompt that holds such markers itself (a template to fill, "What does TODO mean?") is not judged.
    Markers, not words of a language: every row is judged."""

    name: ClassVar[str] = "placeholder_text"
    reason: ClassVar[str] = PLACEHOLDER
    max_other_words: int = 20

    def keeps(self, messages: Messages) -> bool:
        for prompt, answer in exchanges(messages):
            if PLACEHOLDER_MARKERS.search(prompt) or PLACEHOLDER_ANSWER.search(prompt) or \
                    re.search(r"\b(?:template|placeholder|fill[- ]in)", prompt, re.IGNORECASE):
                continue
            if is_placeholder(answer, self.max_other_words):
                return False
        return True


@dataclass(frozen=True)
class NonWordFilter(Filter):
    """An answer most of whose letters are in tokens that are neither English words nor spelt like English
    (``english.is_non_word``, from wordfreq): keyboard mashing. English rows only (``judges``)."""

    name: ClassVar[str] = "non_word_text"
    reason: ClassVar[str] = NON_WORDS
    max_fraction: float
    min_letters: int = 4
    judges: Callable[[Messages], bool] = every_row

    def keeps(self, messages: Messages) -> bool:
        if not self.judges(messages):
            return True
        for answer in answers(messages):
            fraction, letters = english.non_word_fraction(answer)
            if letters >= self.min_letters and fraction > self.max_fraction:
                return False
        return True


# An open instruction asks for substance: its verb opens the prompt or a sentence of it, or follows a polite
# lead-in ("Can you explain ..."); "how do I ...", "what's the best way ...", "what are some ..." ask for it too
OPEN_INSTRUCTION = re.compile(
    r"(?:^|[.!?:;\n]\s*|\b(?:please|can you|could you|would you|will you|i need you to|i want you to|help me|"
    r"i'd like you to|try to)\s+)"
    r"(?P<verb>explain|describe|discuss|elaborate(?: on)?|compare|contrast|analy[sz]e|summari[sz]e|outline|"
    r"write|draft|compose|create|generate|list|brainstorm|suggest|propose|recommend|design|develop|implement|"
    r"plan|help me|tell me (?:about|how|why|what)|walk me through|teach me|"
    r"give (?:me |us )?(?:an? |some |the |\w+ )?(?:overview|explanation|description|summary|examples?|list|"
    r"rundown|breakdown|tips|ideas|steps|reasons|advice|feedback|suggestions|recommendations)|"
    r"how (?:do|does|can|could|should|would|to|did)\b(?! you say)|what(?:'s| is| are) (?:the best|a good|some)|"
    r"what are the (?:main|key|differences|benefits|advantages|pros|steps|ways|causes|effects)|why)\b",
    re.IGNORECASE)
# ... unless the prompt asks for something small: one word, a title, yes or no, the result only
CLOSED_REQUEST = re.compile(
    r"\b(?:in |with |using )?(?:one|a single|1|two|three|2|3) words?\b|\byes or no\b|\btrue or false\b|"
    r"\b(?:only|just) (?:the|a|one|with)\b|\b(?:result|answer|number|name) only\b|"
    r"\b(?:a|one|an?) (?:title|name|word|number|headline|slogan|synonym|antonym|tagline|hashtag|emoji|"
    r"letter|label|category|rhyme|acronym|abbreviation|pun|nickname)\b|\bone[- ]liner\b",
    re.IGNORECASE)
LIST_VERBS = re.compile(r"^(?:list|brainstorm|suggest|give)", re.IGNORECASE)
LIST_ITEM_BREAK = re.compile(r"[,;\n]|\band\b|\bor\b")


def open_verb(prompt: str) -> str | None:
    """The verb that makes ``prompt`` an open instruction (explain, write, list, ...), or None when it is a
    closed question or asks for something small ("Write one word that rhymes with cat")."""
    match = OPEN_INSTRUCTION.search(prompt)
    if match is None or CLOSED_REQUEST.search(prompt):
        return None
    return match.group("verb").lower()


@dataclass(frozen=True)
class AdequacyFilter(Filter):
    """An open instruction (explain, describe, write, compare, list, ...) answered in fewer than ``min_words``
    words; a closed question may have a one-word answer ("What is 7 x 8?" -> "56"), and a list
    instruction is answered by two items or more. The verbs are English: English rows only (``judges``)."""

    name: ClassVar[str] = "answer_adequacy"
    reason: ClassVar[str] = INADEQUATE_ANSWER
    min_words: int
    judges: Callable[[Messages], bool] = every_row

    def keeps(self, messages: Messages) -> bool:
        if not self.judges(messages):
            return True
        for prompt, answer in exchanges(messages):
            verb = open_verb(prompt)
            if verb is None or len(words(answer)) >= self.min_words:
                continue
            items = [part for part in LIST_ITEM_BREAK.split(answer) if words(part)]
            if LIST_VERBS.match(verb) and len(items) >= 2:
                continue
            return False
        return True


# Words a restatement adds to the prompt's ("So you're asking ...", "That's the question.")
RESTATING = frozenset(english.stem(word) for word in (
    "ask", "asking", "asked", "question", "questions", "wondering", "wonder", "like", "want", "wants", "know",
    "yes", "ok", "okay", "sure", "so", "basically", "essentially", "simply", "here", "topic", "request",
    "summary", "answer", "use"))


@dataclass(frozen=True)
class EchoFilter(Filter):
    """An answer that only repeats its prompt: the answer copies a run of ``min_copied_words`` words or more
    of the prompt and adds nothing (a translation or rewrite handed back unchanged); or every content word
    of the answer is the prompt's, or a restating word ("asking", "question"), and it restates at least
    ``min_overlap`` of the prompt's content words. Earlier user turns count as the prompt. "The capital of
    France is Paris." adds "Paris", so it is kept. Words, not one language's: every row is judged."""

    name: ClassVar[str] = "prompt_echo"
    reason: ClassVar[str] = ECHOED_PROMPT
    min_overlap: float
    min_copied_words: int = 4

    def keeps(self, messages: Messages) -> bool:
        for asked, answer in asked_so_far(messages):
            answer_words = words(answer)
            if not answer_words:
                continue
            if len(answer_words) >= self.min_copied_words and f" {' '.join(answer_words)} " in \
                    f" {' '.join(words(asked))} ":
                return False
            said = set(english.content_words(answer))
            prompt = set(english.content_words(asked))
            latest = set(english.content_words(asked.rsplit("\n", 1)[-1])) or prompt
            # a number or one word taken from the prompt answers a choice ("3 or 5?" -> "5"): not an echo
            if len(answer_words) >= 2 and not all(word.isdigit() for word in said) and \
                    not said - prompt - RESTATING and \
                    len(said & latest) >= self.min_overlap * len(latest):
                return False
        return True


@dataclass(frozen=True)
class RefusalClassifierFilter(Filter):
    """Refusals and AI boilerplate the phrase list does not hold, by a logistic regression over MiniLM
    embeddings (``pipelines.curate.refusal``) dropping at probability >= ``threshold``.

    Embedding a row costs milliseconds, so only answers with a refusal cue (sorry, cannot, AI, policy, ...:
    ``refusal.has_cue``) are embedded; every refusal the classifier was fitted on has one, and most rows
    have none. English rows only (``judges``)."""

    name: ClassVar[str] = "refusal_classifier"
    reason: ClassVar[str] = CLASSIFIED_REFUSAL
    threshold: float
    judges: Callable[[Messages], bool] = every_row

    def keeps(self, messages: Messages) -> bool:
        return self.reasons([messages]) == [KEPT]

    def reasons(self, conversations: Sequence[Messages]) -> list[str]:
        from pipelines.curate import refusal

        asked = [(i, answer) for i, messages in enumerate(conversations) if self.judges(messages)
                 for answer in answers(messages) if refusal.has_cue(answer)]
        probabilities = refusal.refusal_probabilities([answer for _, answer in asked])
        refused = {i for (i, _), probability in zip(asked, probabilities, strict=True)
                   if probability >= self.threshold}
        return [self.reason if i in refused else KEPT for i in range(len(conversations))]


DIGITS = frozenset("0123456789")


@dataclass(frozen=True)
class RelatednessFilter(Filter):
    """An answer unrelated to its prompt: cosine similarity of their MiniLM embeddings below
    ``min_similarity``.

    Embedding costs milliseconds a row, so only exchanges the cheap checks cannot settle are embedded: an
    answer of ``min_words`` words or more that shares no word but the commonest ones with what was asked
    (one that does is on its subject: "2 7 9" for "Sort 7 2 9."; a shorter one is a closed question's
    answer, "56", or was judged by the adequacy check). English rows only: the bundled MiniLM is an English
    model."""

    name: ClassVar[str] = "answer_relatedness"
    reason: ClassVar[str] = UNRELATED_ANSWER
    min_similarity: float
    min_words: int = 3
    judges: Callable[[Messages], bool] = every_row

    def unsettled(self, prompt: str, answer: str) -> bool:
        answer_words = words(answer)
        if len(answer_words) < self.min_words:
            return False
        common = english.function_words() - DIGITS  # "Sort 7 2 9." -> "2 7 9" shares the numbers
        return not (set(answer_words) - common) & (set(words(prompt)) - common)

    def keeps(self, messages: Messages) -> bool:
        return self.reasons([messages]) == [KEPT]

    def reasons(self, conversations: Sequence[Messages]) -> list[str]:
        from pipelines.curate.embeddings import embed

        asked = [(i, prompt, answer) for i, messages in enumerate(conversations) if self.judges(messages)
                 for prompt, answer in asked_so_far(messages) if self.unsettled(prompt, answer)]
        if not asked:
            return [KEPT] * len(conversations)
        vectors = embed([text for _, prompt, answer in asked for text in (prompt, answer)])
        similarities = (vectors[0::2] * vectors[1::2]).sum(axis=1)
        unrelated = {i for (i, _, _), similarity in zip(asked, similarities, strict=True)
                     if similarity < self.min_similarity}
        return [self.reason if i in unrelated else KEPT for i in range(len(conversations))]
