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
from typing import TYPE_CHECKING, Any, ClassVar

from pipelines.curate import english
from pipelines.curate.reasons import (
    BAD_TURNS,
    CLASSIFIED_REFUSAL,
    ECHOED_PROMPT,
    EMPTY_ANSWER,
    INADEQUATE_ANSWER,
    KEPT,
    NON_WORDS,
    OTHER_LANGUAGE,
    OVER_LONG,
    PLACEHOLDER,
    REFUSAL,
    REPEATED_LINES,
    REPEATED_NGRAMS,
    SHORT_ANSWER,
    TEMPLATE_ERROR,
    UNRELATED_ANSWER,
)

if TYPE_CHECKING:
    from pipelines.config import RayloraConfig

Messages = Sequence[dict[str, str]]
Verdict = tuple[bool, str]
KEEP: Verdict = (True, KEPT)

WORD = re.compile(r"\w+", re.UNICODE)
# Refusals and AI boilerplate: phrases an assistant that does the task never needs.
REFUSAL_PATTERNS = re.compile(
    r"\bas an ai\b|\bas a (?:large )?language model\b|\bas an ai language model\b|"
    r"\bi(?: a|')m (?:not able|unable) to\b|\bi am not able to\b|\bi (?:cannot|can't|can not) "
    r"(?:help|assist|provide|answer|comply|fulfil)|\bi'm sorry,? but\b|\bi apologi[sz]e,? but\b|"
    r"\bi don't have personal (?:opinions|feelings)\b|\bmy knowledge cutoff\b",
    re.IGNORECASE,
)


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


# --- what an answer is, beyond its length: placeholders, non-words, adequacy, echoes, refusals, relatedness ---

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


def english_rows(curate: Any) -> Callable[[Messages], bool] | None:
    """Which rows the English-only filters judge: every row when English is the only allowed language (the
    language filter, earlier in the chain, has dropped the rows it is sure are not English); the rows
    identified as English, or too short to identify, when other languages are allowed too (``[]`` allows
    all); None when English is not allowed at all (the English filters do not run)."""
    allowed = list(curate.languages)
    if allowed == ["en"]:
        return every_row
    if allowed and "en" not in allowed:
        return None

    def is_english(messages: Messages) -> bool:  # by the prompts: a junk answer can fool language id
        text = conversation_text([m for m in messages if m["role"] == "user"])
        return sum(ch.isalpha() for ch in text) < curate.language_min_letters or identify_language(text)[0] == "en"

    return is_english


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
    # mostly non-words (the sample's French, German, Spanish, Portuguese rows: at most 14% of their letters)
    if english_only is not None and curate.max_non_word_fraction is not None:
        chain.append(NonWordFilter(curate.max_non_word_fraction, judges=english_only))
    if count_tokens is not None:
        chain.append(LengthFilter(count_tokens, max_tokens))
    if curate.languages:
        chain.append(LanguageFilter(tuple(curate.languages), curate.language_min_letters,
                                    curate.language_min_confidence))
    if english_only is None:
        return chain
    if curate.open_answer_min_words is not None:
        chain.append(AdequacyFilter(curate.open_answer_min_words, judges=english_only))
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


# --- what the length filter counts with -------------------------------------------------------------

def length_model(cfg: RayloraConfig) -> str:
    """The model section the length filter renders and counts with, as JSON (plain data for Ray tasks):
    ``model`` with ``base`` resolved, its tokenizer ``data.tokenizer`` when that is set."""
    from pipelines.models import resolve_base_model

    return cfg.model.model_copy(update={"base": resolve_base_model(cfg.data.tokenizer or cfg.model.base)}
                                ).model_dump_json()


def token_limit(cfg: RayloraConfig) -> int:
    """The length filter's limit: ``curate.max_tokens``, else ``model.max_seq_len``."""
    return cfg.curate.max_tokens or cfg.model.max_seq_len


@lru_cache(maxsize=2)
def chat_token_counter(model_json: str) -> Callable[[Sequence[Messages]], list[int | None]]:
    """Token counts of conversations as training renders them: the model's chat template
    (``adapters.tokenizer.load_counting_tokenizer``, which applies ``model.chat_template`` and does not import
    torch), then its tokenizer.
    Loaded once per process (Ray reuses its worker processes, so once per worker)."""
    from adapters.tokenizer import load_counting_tokenizer
    from pipelines.config import ModelConfig

    tokenizer = load_counting_tokenizer(ModelConfig.model_validate_json(model_json))

    def count(conversations: Sequence[Messages]) -> list[int | None]:
        if not conversations:
            return []
        try:  # one call renders and tokenises the whole batch
            return [len(ids) for ids in tokenizer.apply_chat_template(list(conversations), tokenize=True,
                                                                        return_dict=False)]
        except Exception:  # the template refused a row (e.g. a role it does not support): find which
            return [_count_one(tokenizer, messages) for messages in conversations]

    return count


def _count_one(tokenizer: Any, messages: Messages) -> int | None:
    try:
        return len(tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=False))
    except Exception:  # any error of the template or tokenizer on this row: training would hit it too
        return None
