"""Row filters: small named objects over canonical messages; calling one returns ``(keep, reason)``.

    raylora curate configs/demo.yaml     # runs them on Ray Data; curate.* keys configure them

A filter has a ``name`` (what it checks), the check (``keeps``) and the ``reason`` a row it drops is
counted under (datatrove's base_filter shape). It looks at one conversation (``[{"role", "content"}]``,
roles system / user / assistant); a kept row has no reason (``KEPT``). ``build_filters`` turns the
``curate`` config section into the ordered chain; cheap checks run first and the first failing one
names the reason. ``first_failures`` runs the chain over a batch one filter at a time, so a filter that
works faster on many rows at once (the length filter tokenises a batch in one call) can, and times each.

Beyond form and length, the chain judges what an answer says (issue 12): placeholders, non-words
(wordfreq), an open instruction answered in a few words, echoes of the prompt, refusals and boilerplate
beyond the phrase list (a classifier over MiniLM embeddings) and answers unrelated to their prompt (the
same embeddings). The English-only ones (word list, verbs, classifier, relatedness) judge the rows whose
prompts are English (``english_rows``); the embedding ones embed only the rows no cheap check settles.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from pipelines.curate import instructions
from pipelines.curate.filter_base import (
    Filter,
    Messages,
    answers,
    conversation_text,
    words,
)
from pipelines.curate.quality_filters import (
    AdequacyFilter,
    EchoFilter,
    NonWordFilter,
    PlaceholderFilter,
    RefusalClassifierFilter,
    RelatednessFilter,
    every_row,
)
from pipelines.curate.reasons import (
    BAD_TURNS,
    EMPTY_ANSWER,
    KEPT,
    OTHER_LANGUAGE,
    OVER_LONG,
    REFUSAL,
    REPEATED_LINES,
    REPEATED_NGRAMS,
    SHORT_ANSWER,
    TEMPLATE_ERROR,
)

ENGLISH = frozenset({"en"})


# Refusals and AI boilerplate: phrases an assistant that does the task never needs, in English and in the
# other languages users most often curate (French, German, Spanish, Italian, Portuguese)
REFUSAL_PATTERNS = re.compile(
    r"\bas an ai\b|\bas a (?:large )?language model\b|\bas an ai language model\b|"
    r"\bi(?: a|')m (?:not able|unable) to\b|\bi am not able to\b|\bi (?:cannot|can't|can not) "
    r"(?:help|assist|provide|answer|comply|fulfil)|\bi'm sorry,? but\b|\bi apologi[sz]e,? but\b|"
    r"\bi don't have personal (?:opinions|feelings)\b|\bmy knowledge cutoff\b|"
    r"\ben tant qu(?:e |')(?:ia|intelligence artificielle|assistant|mod[eè]le de langage)\b|"
    r"\bje ne (?:peux|suis) pas (?:en mesure de )?(?:vous |t')?(?:aider|r[ée]pondre)|\bje suis d[ée]sol[ée]e?,? mais\b|"
    r"\bals (?:ki|künstliche intelligenz|sprachmodell|ki-assistent)\b|\bich kann (?:ihnen |dir )?(?:dabei |hierbei )?"
    r"nicht (?:helfen|antworten)|\bes tut mir leid,? aber\b|"
    r"\bcomo (?:una? )?(?:ia|inteligencia artificial|modelo de lenguaje|asistente virtual)\b|"
    r"\bno puedo (?:ayudarte|ayudarle|ayudar|responder)|\blo siento,? pero\b|"
    r"\bcome (?:un )?(?:ia|intelligenza artificiale|modello linguistico)\b|\bnon posso (?:aiutarti|aiutare|rispondere)|"
    r"\bmi dispiace,? ma\b|\bcomo (?:uma )?(?:ia|intelig[êe]ncia artificial|modelo de linguagem)\b|"
    r"\bn[ãa]o posso (?:ajudar|responder)",
    re.IGNORECASE)


@dataclass(frozen=True)
class TurnOrderFilter(Filter):
    """An optional system turn, then user / assistant alternating, starting with user, ending with assistant;
    no empty prompt."""

    name: ClassVar[str] = "turn_order"
    reason: ClassVar[str] = BAD_TURNS

    def keeps(self, messages: Messages) -> bool:
        roles = [m["role"] for m in messages]
        if roles[:1] == ["system"]:
            roles = roles[1:]
        if not roles or len(roles) % 2 or roles != ["user", "assistant"] * (len(roles) // 2):
            return False
        return all(m["content"].strip() for m in messages if m["role"] == "user")


@dataclass(frozen=True)
class EmptyAnswerFilter(Filter):
    """Every answer holds at least ``min_chars`` characters that are not whitespace."""

    name: ClassVar[str] = "answer_chars"
    reason: ClassVar[str] = EMPTY_ANSWER
    min_chars: int = 1

    def keeps(self, messages: Messages) -> bool:
        return all(len(a.strip()) >= max(self.min_chars, 1) for a in answers(messages))


@dataclass(frozen=True)
class RefusalFilter(Filter):
    """Refusals and 'as an AI language model' boilerplate in any answer."""

    name: ClassVar[str] = "refusal_phrases"
    reason: ClassVar[str] = REFUSAL

    def keeps(self, messages: Messages) -> bool:
        return not any(REFUSAL_PATTERNS.search(a) for a in answers(messages))


def repeated_line_fraction(text: str) -> float:
    """Fraction of the non-empty lines that repeat an earlier line (texts of fewer than 3 lines: 0)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if len(lines) >= 3 else 0.0


def repeated_ngram_fraction(tokens: Sequence[str], n: int) -> float:
    """Fraction of the n-grams that repeat an earlier n-gram of the same text."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class RepeatedLinesFilter(Filter):
    """Degenerate answers that repeat the same lines over and over."""

    name: ClassVar[str] = "line_repetition"
    reason: ClassVar[str] = REPEATED_LINES
    max_fraction: float

    def keeps(self, messages: Messages) -> bool:
        return all(repeated_line_fraction(a) <= self.max_fraction for a in answers(messages))


@dataclass(frozen=True)
class RepeatedNgramsFilter(Filter):
    """Degenerate answers that repeat the same word n-grams (answers of < ``min_words`` words are not judged)."""

    name: ClassVar[str] = "ngram_repetition"
    reason: ClassVar[str] = REPEATED_NGRAMS
    max_fraction: float
    n: int = 3
    min_words: int = 12

    def keeps(self, messages: Messages) -> bool:
        for answer in answers(messages):
            tokens = words(answer)
            if len(tokens) >= self.min_words and repeated_ngram_fraction(tokens, self.n) > self.max_fraction:
                return False
        return True


@dataclass(frozen=True)
class ShortAnswerFilter(Filter):
    """A long request (>= ``min_prompt_words`` words) answered in a fraction of its length.

    Short answers to short questions ("What is 3 + 4?" -> "7") are the point of many tasks, so only
    prompts long enough to ask for more are judged, by answer chars / prompt chars.
    """

    name: ClassVar[str] = "answer_ratio"
    reason: ClassVar[str] = SHORT_ANSWER
    min_ratio: float
    min_prompt_words: int

    def keeps(self, messages: Messages) -> bool:
        if self.min_ratio <= 0:
            return True
        for prompt, answer in zip(messages, messages[1:], strict=False):
            if prompt["role"] != "user" or answer["role"] != "assistant":
                continue
            if len(words(prompt["content"])) >= self.min_prompt_words and \
                    len(answer["content"].strip()) < self.min_ratio * len(prompt["content"].strip()):
                return False
        return True


@dataclass(frozen=True)
class LengthFilter(Filter):
    """The conversation as training sees it, rendered by the model's chat template and tokenised, fits
    ``max_tokens``; one the template cannot render is dropped as ``template_error`` (training could not
    render it either). ``count_tokens`` maps conversations to token counts, None where rendering failed."""

    name: ClassVar[str] = "token_length"
    reason: ClassVar[str] = OVER_LONG
    count_tokens: Callable[[Sequence[Messages]], list[int | None]]
    max_tokens: int

    def keeps(self, messages: Messages) -> bool:
        return self.reasons([messages]) == [KEPT]

    def reasons(self, conversations: Sequence[Messages]) -> list[str]:
        return [TEMPLATE_ERROR if count is None else OVER_LONG if count > self.max_tokens else KEPT
                for count in self.count_tokens(conversations)]


@lru_cache(maxsize=1)
def _language_identifier() -> Any:
    """langid's bundled model (offline)."""
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def identify_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) by langid's model.

    langid multiplies a dense 7480-feature vector by its (7480 x 97) table; a short text has a few
    dozen non-zero features, so the same product over those rows only is ~60x faster. The
    probabilities are normalised over the languages (langid's ``norm_probs``).
    """
    import numpy as np

    identifier = _language_identifier()
    features = identifier.instance2fv(text)
    present = np.flatnonzero(features)
    log_probs = features[present] @ identifier.nb_ptc[present] + identifier.nb_pc
    best = int(log_probs.argmax())
    probs = np.exp(log_probs - log_probs[best])
    return identifier.nb_classes[best], float(1.0 / probs.sum())


@dataclass(frozen=True)
class LanguageFilter(Filter):
    """Drop a conversation confidently identified as a language outside ``allowed`` (empty: keep all).

    Language id on a few words ("Sort 7 2 9.") is noise, so text with fewer than ``min_letters``
    letters is not judged, and only a confident verdict drops a row.
    """

    name: ClassVar[str] = "language_id"
    reason: ClassVar[str] = OTHER_LANGUAGE
    allowed: tuple[str, ...]
    min_letters: int
    min_confidence: float
    identify: Callable[[str], tuple[str, float]] = identify_language

    def keeps(self, messages: Messages) -> bool:
        if not self.allowed:
            return True
        text = conversation_text([m for m in messages if m["role"] != "system"])
        if sum(ch.isalpha() for ch in text) < self.min_letters:
            return True
        lang, prob = self.identify(text)
        return lang in self.allowed or prob < self.min_confidence


def language_rows(curate: Any, known: frozenset[str]) -> Callable[[Messages], bool] | None:
    """Which rows the filters that know the ``known`` languages judge: every row when every allowed language is
    known (the language filter, earlier in the chain, has dropped the rows it is sure are in another); the
    rows whose prompts are identified as a known language, or are too short to identify, when other languages
    are allowed too (``[]`` allows all); None when no known language is allowed (those filters do not run)."""
    allowed = set(curate.languages)
    if allowed and allowed <= known:
        return every_row
    if allowed and not allowed & known:
        return None

    def is_known(messages: Messages) -> bool:  # by the prompts: a junk answer can fool language id
        text = conversation_text([m for m in messages if m["role"] == "user"])
        return sum(ch.isalpha() for ch in text) < curate.language_min_letters or identify_language(text)[0] in known

    return is_known


def english_rows(curate: Any) -> Callable[[Messages], bool] | None:
    """Which rows the English-only filters (word list, classifier, relatedness) judge (``language_rows``)."""
    return language_rows(curate, ENGLISH)


def build_filters(curate: Any, count_tokens: Callable[[Sequence[Messages]], list[int | None]] | None,
                  max_tokens: int) -> list[Filter]:
    """The configured chain, cheapest first. ``curate`` is the CurateConfig section; ``count_tokens`` counts
    conversations for the length filter (``chat_token_counter``); without it no length filter runs.

    The checks of what an answer says come after the language filter (but the non-word check, which mashing
    could otherwise pass off as a foreign language), so a row in a language outside ``curate.languages`` is
    named ``other_language``; the embedding checks come last, so they see only the rows every cheap check
    kept."""
    chain: list[Filter] = [TurnOrderFilter(), EmptyAnswerFilter(curate.min_answer_chars)]
    if curate.drop_refusals:
        chain.append(RefusalFilter())
    # an answer that is the prompt said twice is an echo before it is a repetition
    if curate.min_echo_overlap is not None:
        chain.append(EchoFilter(curate.min_echo_overlap))
    # lines before n-grams: a repeated line repeats its n-grams too, and the line check names it more exactly
    chain.append(RepeatedLinesFilter(curate.max_repeated_line_fraction))
    chain.append(RepeatedNgramsFilter(curate.max_repeated_ngram_fraction))
    chain.append(ShortAnswerFilter(curate.min_answer_ratio, curate.short_answer_min_prompt_words))
    if curate.drop_placeholders:
        chain.append(PlaceholderFilter())
    english_only = english_rows(curate)
    # before language id: mashing can look like a foreign language to it, and no real language's text is
    # mostly non-words (the sample's French, German, Spanish, Portuguese rows: at most 14% of their letters);
    # rows in other languages are judged by the shapes of mashing alone
    if curate.max_non_word_fraction is not None:
        chain.append(NonWordFilter(curate.max_non_word_fraction, english=english_only))
    if count_tokens is not None:
        chain.append(LengthFilter(count_tokens, max_tokens))
    if curate.languages:
        chain.append(LanguageFilter(tuple(curate.languages), curate.language_min_letters,
                                    curate.language_min_confidence))
    instruction_rows = language_rows(curate, instructions.LANGUAGES)
    if curate.open_answer_min_words is not None and instruction_rows is not None:
        chain.append(AdequacyFilter(curate.open_answer_min_words, judges=instruction_rows, english=english_only))
    if english_only is None:
        return chain
    if curate.refusal_classifier_threshold is not None:
        chain.append(RefusalClassifierFilter(curate.refusal_classifier_threshold, judges=english_only))
    if curate.min_answer_relatedness is not None:
        chain.append(RelatednessFilter(curate.min_answer_relatedness, judges=english_only))
    return chain


def first_failure(messages: Messages, chain: Sequence[Filter]) -> str:
    """The reason of the first filter that drops the conversation, or ``KEPT`` when every filter keeps it."""
    return first_failures([messages], chain)[0]


def first_failures(conversations: Sequence[Messages | None], chain: Sequence[Filter],
                   seconds: dict[str, float] | None = None) -> list[str]:
    """``first_failure`` of each conversation, one filter at a time over the rows every earlier filter kept.
    A None (a row already dropped) is left alone: its place holds ``KEPT`` for the caller to overwrite.
    ``seconds``, when given, gains each filter's time by name (the report's per-filter seconds)."""
    verdicts = [KEPT] * len(conversations)
    live = [i for i, messages in enumerate(conversations) if messages is not None]
    for check in chain:
        if not live:
            break
        start = time.perf_counter()
        for i, reason in zip(live, check.reasons([conversations[i] for i in live]), strict=True):
            verdicts[i] = reason
        if seconds is not None:
            seconds[check.name] = seconds.get(check.name, 0.0) + time.perf_counter() - start
        live = [i for i in live if verdicts[i] == KEPT]
    return verdicts

