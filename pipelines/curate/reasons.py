"""The one table of drop reasons: every row curation does not keep is counted under one of these.

Formats, filters, dedup, decontamination, selection, the stage's report, the benchmark and the tests all
use these constants; a reason string written anywhere else is a reason this table does not explain.
A kept row carries ``KEPT`` (no reason).
"""

from __future__ import annotations

KEPT = ""

MALFORMED = "malformed"
BAD_TURNS = "bad_turns"
EMPTY_ANSWER = "empty_answer"
REFUSAL = "refusal"
REPEATED_LINES = "repeated_lines"
REPEATED_NGRAMS = "repeated_ngrams"
SHORT_ANSWER = "short_answer"
OVER_LONG = "over_long"
TEMPLATE_ERROR = "template_error"
OTHER_LANGUAGE = "other_language"
PLACEHOLDER = "placeholder"
NON_WORDS = "non_words"
INADEQUATE_ANSWER = "inadequate_answer"
ECHOED_PROMPT = "echoed_prompt"
CLASSIFIED_REFUSAL = "classified_refusal"
UNRELATED_ANSWER = "unrelated_answer"
CONTAMINATED = "contaminated"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
BELOW_TOP_K = "below_top_k"
NOT_DIVERSE = "not_diverse"
OVER_SOURCE_CAP = "over_source_cap"
OVER_SOURCE_WEIGHT = "over_source_weight"

# reason -> what it means, one line each, in the order curation checks them (the report prints the meaning)
REASONS: dict[str, str] = {
    MALFORMED: "a record that cannot be read as a conversation",
    BAD_TURNS: "turns out of user/assistant order, or empty prompt",
    EMPTY_ANSWER: "an answer shorter than curate.min_answer_chars",
    REFUSAL: "a refusal or 'as an AI language model' boilerplate",
    REPEATED_LINES: "an answer that repeats the same lines",
    REPEATED_NGRAMS: "an answer that repeats the same word n-grams",
    SHORT_ANSWER: "a long request answered in a few characters",
    OVER_LONG: "its chat-template tokens exceed curate.max_tokens",
    TEMPLATE_ERROR: "the model's chat template cannot render it",
    OTHER_LANGUAGE: "a language outside curate.languages",
    PLACEHOLDER: "placeholder text: lorem ipsum, TODO, [insert ...]",
    NON_WORDS: "an answer mostly of non-words (keyboard mashing)",
    INADEQUATE_ANSWER: "an open instruction (explain, write, ...) answered in a few words",
    ECHOED_PROMPT: "an answer that only repeats the instruction",
    CLASSIFIED_REFUSAL: "a refusal or AI boilerplate, by the refusal classifier",
    UNRELATED_ANSWER: "an answer unrelated to its instruction, by embeddings",
    CONTAMINATED: "holds text of an eval item (data.eval_sets)",
    EXACT_DUPLICATE: "the same text as a kept row",
    NEAR_DUPLICATE: "nearly the same text as a kept row",
    BELOW_TOP_K: "outside the curate.quality_top_k best rows",
    NOT_DIVERSE: "not among the curate.diversity_select most diverse",
    OVER_SOURCE_CAP: "beyond its source's max_rows (data.sources)",
    OVER_SOURCE_WEIGHT: "beyond its source's share of the mix (data.sources weight)",
}
