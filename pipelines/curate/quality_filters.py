"""Filters of what an answer is, beyond its length: placeholders, non-words, adequacy, echoes, refusals by a
classifier, relatedness to the instruction. ``filters.build_filters`` puts them in the chain."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from pipelines.curate import english, placeholders
from pipelines.curate.filter_base import (
    Filter,
    Messages,
    answers,
    words,
)
from pipelines.curate.instructions import (
    LIST_VERBS,
    asks_for_something_small,
    asks_for_translation,
    list_items,
    open_verb,
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


@dataclass(frozen=True)
class PlaceholderFilter(Filter):
    """An answer that is a stand-in (``placeholders.is_placeholder``): template slots, TODO, lorem ipsum, a code
    stub, N/A. A prompt that holds stand-ins itself or asks for a template is not judged. Marks and slots, not
    words of one language: every row is judged."""

    name: ClassVar[str] = "placeholder_text"
    reason: ClassVar[str] = PLACEHOLDER
    min_other_words: int = placeholders.MIN_OTHER_WORDS

    def keeps(self, messages: Messages) -> bool:
        return not any(not placeholders.asks_for_a_template(prompt) and
                       placeholders.is_placeholder(answer, self.min_other_words)
                       for prompt, answer in exchanges(messages))


@dataclass(frozen=True)
class NonWordFilter(Filter):
    """An answer most of whose letters are in tokens that are not words: keyboard mashing. English rows
    (``english``) by wordfreq's list and English spelling (``english.is_non_word``); rows in other languages
    by the shapes of mashing alone (``english.is_typed_noise``: along a keyboard row, no vowel, a repeated
    unit), which need no word list."""

    name: ClassVar[str] = "non_word_text"
    reason: ClassVar[str] = NON_WORDS
    max_fraction: float
    min_letters: int = 4
    english: Callable[[Messages], bool] | None = every_row

    def keeps(self, messages: Messages) -> bool:
        is_noise = english.is_non_word if self.english is not None and self.english(messages) \
            else english.is_typed_noise
        for answer in answers(messages):
            fraction, letters = english.non_word_fraction(answer, is_noise)
            if letters >= self.min_letters and fraction > self.max_fraction:
                return False
        return True


# a short answer that shares no content word with what was asked may be a non-answer ("ok", "see above");
# the classifier judges those of at most this many words
NON_ANSWER_MAX_WORDS = 12
NUMBER = re.compile(r"^[\W\d_]*\d[\W\d_]*$")


@dataclass(frozen=True)
class AdequacyFilter(Filter):
    """An answer that does not answer: an open instruction (explain, describe, write, compare, list, how, why:
    ``instructions.open_verb``) answered in fewer than ``min_words`` words, where a list instruction is
    answered by two items or more and a closed question may have a one-word answer ("What is 7 x 8?" -> "56");
    or, in English rows (``english``), a short answer of listed words sharing none with what was asked that
    the answer-kind classifier calls a non-answer ("ok cool", "see above", "?") at ``non_answer_threshold``.
    The verbs are those of ``instructions.LANGUAGES``: rows in those only (``judges``)."""

    name: ClassVar[str] = "answer_adequacy"
    reason: ClassVar[str] = INADEQUATE_ANSWER
    min_words: int
    judges: Callable[[Messages], bool] = every_row
    english: Callable[[Messages], bool] | None = every_row
    non_answer_threshold: float = 0.5

    def too_short(self, prompt: str, answer: str) -> bool:
        verb = open_verb(prompt)
        if verb is None or len(words(answer)) >= self.min_words:
            return False
        return not (LIST_VERBS.match(verb) and list_items(answer) >= 2)

    def maybe_non_answer(self, asked: str, answer: str) -> bool:
        """Short, not a number, sharing no word with what was asked ("g o a" for "Reverse a o g"), and made of
        words wordfreq lists (or of no words: "?", an emoji): the classifier must say. An unlisted word is a
        name or a term, which is what a closed question's answer often is ("Tovsil"). A translation's answer is
        not English, whatever words it shares with English ("chat"), and a prompt that asks for one word or a
        name wants a short answer ("Hat." for a word that rhymes with cat)."""
        answer_words = words(answer)
        if asks_for_translation(asked) or asks_for_something_small(asked) or len(answer_words) > NON_ANSWER_MAX_WORDS or NUMBER.match(answer) or set(answer_words) & set(words(asked)):
            return False
        return all(english.zipf(word) > 0 for word in answer_words)

    def keeps(self, messages: Messages) -> bool:
        return self.reasons([messages]) == [KEPT]

    def reasons(self, conversations: Sequence[Messages]) -> list[str]:
        from pipelines.curate import refusal

        verdicts = [KEPT] * len(conversations)
        unsure: list[tuple[int, str]] = []
        for i, messages in enumerate(conversations):
            if self.judges(messages) and any(self.too_short(prompt, answer) for prompt, answer in exchanges(messages)):
                verdicts[i] = self.reason
            elif self.english is not None and self.english(messages):
                unsure += [(i, answer) for asked, answer in asked_so_far(messages)
                           if self.maybe_non_answer(asked, answer)]
        probabilities = refusal.kind_probabilities([answer for _, answer in unsure])
        for (i, _), p in zip(unsure, probabilities, strict=True):
            if p[refusal.NON_ANSWER] >= self.non_answer_threshold and p.argmax() == refusal.NON_ANSWER:
                verdicts[i] = self.reason
        return verdicts


# Words a restatement uses besides the prompt's own: talk about the asking ("So you're asking ...", "that's
# the question") and the nouns of the instruction ("a summary of ...", "an explanation of the concept of ...")
DISCOURSE = frozenset(english.stem(word) for word in (
    "ask", "asking", "asked", "question", "questions", "query", "request", "wondering", "wonder", "curious",
    "want", "wants", "wanted", "wish", "like", "know", "need", "needs", "yes", "ok", "okay", "sure", "basically",
    "essentially", "simply", "actually", "here", "topic", "subject", "answer", "response", "reply", "use",
    "explain", "explanation", "describe", "description", "summary", "summarise", "summarize", "discuss",
    "discussion", "tell", "write", "list", "give", "provide", "outline", "overview", "example", "examples",
    "concept", "idea", "ideas", "meaning", "means", "mean", "definition", "define", "regarding", "about",
    "involve", "involves", "interesting", "great", "certainly", "course", "happy", "glad", "let", "talk",
    "rephrase", "restate", "repeat", "paraphrase", "clarify", "understand", "understood", "mention", "told",
    "interested", "inquire", "information", "info", "detail", "details", "matter", "point", "cover", "address",
    "figure", "explore", "consider", "fascinating", "excellent", "nice", "absolutely", "indeed", "correct",
    "brief", "briefly", "short", "quick", "quickly", "exactly", "precisely"))
PREFIX = 5  # words compared by their first letters: "explanation" ~ "explain", "summary" ~ "summarise"
# an answer opening with a verdict answers a yes/no question; it adds the verdict, even in the prompt's words
VERDICT = re.compile(r"^\W*(?:yes|no|yeah|yep|nope|true|false|correct|incorrect|ja|nein|oui|non|s[ií])\b",
                     re.IGNORECASE)
YES_NO_QUESTION = re.compile(
    r"(?:^|[.!?:]\s+)(?:is|are|was|were|do|does|did|can|could|will|would|should|has|have|had|may|might|must|"
    r"isn't|aren't|don't|doesn't|didn't|can't)\b(?!\s+(?:you|i|we)\b)|\b(?:if|whether)\b|\byes or no\b|"
    r"\btrue or false\b", re.IGNORECASE)


def restated_keys(text: str) -> set[str]:
    """The text's words that could restate a prompt, by their first ``PREFIX`` letters: not the commonest words
    of the languages ``english.common_words_any_language`` knows, nor words of one or two letters."""
    common = english.common_words_any_language()
    stems = [english.stem(token) for token in re.findall(r"\w+", text.lower())
             if token not in common and (len(token) > 2 or token.isdigit())]
    return {stem[:PREFIX] for stem in stems if stem not in common}  # "goes" -> "go", "works" -> "work"


DISCOURSE_KEYS = frozenset(word[:PREFIX] for word in DISCOURSE)


@dataclass(frozen=True)
class EchoFilter(Filter):
    """An answer that only repeats its prompt: it copies a run of ``min_copied_words`` words or more of the
    prompt and adds nothing (a translation or rewrite handed back unchanged); or it adds no word of its own
    beyond the prompt's, the commonest words and talk about the asking ("so you're asking", "a summary of"),
    and restates at least ``min_overlap`` of the latest prompt's words (all of them when the prompt offers a
    choice: "Python is interpreted" picks one of "compiled or interpreted"). Earlier user turns count as the
    prompt. "The capital of France is Paris." adds "Paris"; "Yes, whales are mammals." adds the verdict to a
    yes/no question. The commonest words of several languages: every row is judged."""

    name: ClassVar[str] = "prompt_echo"
    reason: ClassVar[str] = ECHOED_PROMPT
    min_overlap: float
    min_copied_words: int = 4

    def echoes(self, asked: str, latest: str, answer: str) -> bool:
        answer_words = words(answer)
        if len(answer_words) >= self.min_copied_words and \
                f" {' '.join(answer_words)} " in f" {' '.join(words(asked))} ":
            return True
        if len(answer_words) < 2 or (VERDICT.match(answer) and YES_NO_QUESTION.search(latest)):
            return False
        said = restated_keys(answer) - DISCOURSE_KEYS
        # a number taken from the prompt answers a choice ("3 or 5?" -> "5"): not an echo
        if not said or all(key.isdigit() for key in said) or said - restated_keys(asked):
            return False
        restatable = restated_keys(latest) - DISCOURSE_KEYS or said
        needed = len(restatable) if re.search(r"\bor\b", latest, re.IGNORECASE) else \
            self.min_overlap * len(restatable)
        return len(said & restatable) >= needed

    def keeps(self, messages: Messages) -> bool:
        asked: list[str] = []
        for prompt, answer in zip(messages, messages[1:], strict=False):
            if prompt["role"] != "user":
                continue
            asked.append(prompt["content"])
            if answer["role"] == "assistant" and self.echoes("\n".join(asked), prompt["content"], answer["content"]):
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

        # "No, it should be 'you and me'" opens with a verdict on a yes/no question: an answer, not a refusal
        asked = [(i, answer) for i, messages in enumerate(conversations) if self.judges(messages)
                 for prompt, answer in exchanges(messages) if refusal.has_cue(answer) and
                 not (VERDICT.match(answer) and YES_NO_QUESTION.search(prompt))]
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
