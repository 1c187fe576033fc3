"""Row filters: small pure functions over canonical messages, each returning ``(keep, reason)``.

    raylora curate configs/demo.yaml     # runs them on Ray Data; curate.* keys configure them

Each filter looks at one conversation (``[{"role", "content"}]``, roles system / user / assistant)
and says whether to keep it and, if not, the reason it is counted under. A kept row has reason "".
``build_filters`` turns the ``curate`` config section into the ordered chain; cheap checks run first
and the first failing check names the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

Messages = Sequence[dict[str, str]]
Verdict = tuple[bool, str]
Filter = Callable[[Messages], Verdict]
KEEP: Verdict = (True, "")

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


def check_turns(messages: Messages) -> Verdict:
    """An optional system turn, then user / assistant alternating, starting with user, ending with assistant."""
    roles = [m["role"] for m in messages]
    if roles[:1] == ["system"]:
        roles = roles[1:]
    if not roles:
        return False, "bad_turns"
    expected = ["user", "assistant"] * (len(roles) // 2)
    if len(roles) % 2 or roles != expected:
        return False, "bad_turns"
    if any(not m["content"].strip() for m in messages if m["role"] == "user"):
        return False, "bad_turns"
    return KEEP


def check_empty_answer(messages: Messages, min_chars: int = 1) -> Verdict:
    """Every answer holds at least ``min_chars`` characters that are not whitespace."""
    if any(len(a.strip()) < max(min_chars, 1) for a in answers(messages)):
        return False, "empty_answer"
    return KEEP


def check_short_answer(messages: Messages, min_ratio: float, min_prompt_words: int) -> Verdict:
    """A long request (>= ``min_prompt_words`` words) answered in a fraction of its length.

    Short answers to short questions ("What is 3 + 4?" -> "7") are the point of many tasks, so only
    prompts long enough to ask for more are judged, by answer chars / prompt chars.
    """
    if min_ratio <= 0:
        return KEEP
    for prompt, answer in zip(messages, messages[1:], strict=False):
        if prompt["role"] != "user" or answer["role"] != "assistant":
            continue
        if len(words(prompt["content"])) >= min_prompt_words and \
                len(answer["content"].strip()) < min_ratio * len(prompt["content"].strip()):
            return False, "short_answer"
    return KEEP


def check_refusal(messages: Messages) -> Verdict:
    """Refusals and 'as an AI language model' boilerplate in any answer."""
    if any(REFUSAL_PATTERNS.search(a) for a in answers(messages)):
        return False, "refusal"
    return KEEP


def repeated_ngram_fraction(tokens: Sequence[str], n: int) -> float:
    """Fraction of the n-grams that repeat an earlier n-gram of the same text."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def repeated_line_fraction(text: str) -> float:
    """Fraction of the non-empty lines that repeat an earlier line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if len(lines) >= 3 else 0.0


def check_repetition(messages: Messages, max_ngram_fraction: float, max_line_fraction: float,
                     n: int = 3, min_words: int = 12) -> Verdict:
    """Degenerate answers: the same n-grams or lines over and over (answers of < ``min_words`` are not judged)."""
    for answer in answers(messages):
        tokens = words(answer)
        if len(tokens) >= min_words and repeated_ngram_fraction(tokens, n) > max_ngram_fraction:
            return False, "repetition"
        if repeated_line_fraction(answer) > max_line_fraction:
            return False, "repetition"
    return KEEP


def conversation_text(messages: Messages) -> str:
    return "\n".join(m["content"] for m in messages)


def check_length(messages: Messages, count_tokens: Callable[[str], int], max_tokens: int) -> Verdict:
    """The whole conversation fits ``max_tokens`` tokens of the training tokenizer (4 per turn for the template)."""
    # a byte-level tokenizer never makes more tokens than bytes: most rows need no tokenizing at all
    if sum(len(m["content"].encode("utf-8", "surrogatepass")) + 4 for m in messages) <= max_tokens:
        return KEEP
    total = sum(count_tokens(m["content"]) + 4 for m in messages)
    return (True, "") if total <= max_tokens else (False, "over_long")


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


def check_language(messages: Messages, allowed: Sequence[str], min_letters: int, min_confidence: float,
                   identify: Callable[[str], tuple[str, float]] = identify_language) -> Verdict:
    """Drop a conversation confidently identified as a language outside ``allowed``.

    Language id on a few words ("Sort 7 2 9.") is noise, so text with fewer than ``min_letters``
    letters is not judged, and only a confident verdict drops a row.
    """
    if not allowed:
        return KEEP
    text = conversation_text(m for m in messages if m["role"] != "system")
    if sum(ch.isalpha() for ch in text) < min_letters:
        return KEEP
    lang, prob = identify(text)
    if lang not in allowed and prob >= min_confidence:
        return False, "other_language"
    return KEEP


def build_filters(curate: Any, count_tokens: Callable[[str], int] | None, max_tokens: int) -> list[Filter]:
    """The configured chain, cheapest first. ``curate`` is the CurateConfig section."""
    chain: list[Filter] = [check_turns, lambda m: check_empty_answer(m, curate.min_answer_chars)]
    if curate.drop_refusals:
        chain.append(check_refusal)
    chain.append(lambda m: check_repetition(m, curate.max_repeated_ngram_fraction,
                                            curate.max_repeated_line_fraction))
    chain.append(lambda m: check_short_answer(m, curate.min_answer_ratio, curate.short_answer_min_prompt_words))
    if count_tokens is not None:
        chain.append(lambda m: check_length(m, count_tokens, max_tokens))
    if curate.languages:
        chain.append(lambda m: check_language(m, curate.languages, curate.language_min_letters,
                                              curate.language_min_confidence))
    return chain


def quality_score(messages: Messages) -> float:
    """LIMA-style preference for substance: longer answers, more exchanges, varied wording."""
    answer_words = [w for a in answers(messages) for w in words(a)]
    all_words = words(conversation_text(messages))
    variety = len(set(all_words)) / len(all_words) if all_words else 0.0
    exchanges = sum(m["role"] == "assistant" for m in messages)
    return math.log1p(len(answer_words)) + 0.5 * (exchanges - 1) + variety


def first_failure(messages: Messages, chain: Sequence[Filter]) -> str:
    """The reason of the first filter that drops the conversation, or "" when every filter keeps it."""
    for check in chain:
        keep, reason = check(messages)
        if not keep:
            return reason
    return ""
