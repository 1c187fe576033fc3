"""Each filter on the cases it must drop and the clean rows it must keep."""

import pytest

from pipelines.config import CurateConfig
from pipelines.curate.filters import (
    build_filters,
    check_empty_answer,
    check_language,
    check_length,
    check_refusal,
    check_repetition,
    check_short_answer,
    check_turns,
    first_failure,
    identify_language,
    quality_score,
)


def chat(*turns):
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return [{"role": roles[t[0]], "content": t[2:]} for t in turns]


CLEAN = [
    chat("u What is 3 + 4?", "a 7"),
    chat("u Sort 7 2 9.", "a 2 7 9"),
    chat("u Please help. What is the capital of Zentovtov?", "a Xanpel"),
    chat("s You are a precise assistant. Answer with the result only.", "u What is 4 + 7?", "a 11",
         "u What is 6 + 2?", "a 8"),
]
ESSAY = ("Write a detailed essay of several paragraphs about the history, culture, economy and geography of "
         "Kalo, including its capital Ven, its rivers, its famous people and what a traveller should see there.")


@pytest.mark.parametrize("messages", CLEAN)
def test_clean_rows_pass_every_filter(messages):
    chain = build_filters(CurateConfig(), lambda text: len(text.split()), 256)
    assert first_failure(messages, chain) == ""


@pytest.mark.parametrize("messages", [
    chat("a 7", "u What is 3 + 4?"),
    chat("u What is 3 + 4?", "u What is 3 + 4?", "a 7"),
    chat("u What is 3 + 4?"),
    chat("u ", "a 7"),
    chat("s Be brief."),
])
def test_bad_turns(messages):
    assert check_turns(messages) == (False, "bad_turns")


@pytest.mark.parametrize("answer", ["", "   ", "\n"])
def test_empty_answer(answer):
    assert check_empty_answer(chat("u What is 3 + 4?", f"a {answer}")) == (False, "empty_answer")


def test_short_answer_needs_a_long_prompt():
    assert check_short_answer(chat(f"u {ESSAY}", "a Yes."), 0.05, 30) == (False, "short_answer")
    assert check_short_answer(chat("u What is 3 + 4?", "a 7"), 0.05, 30) == (True, "")
    assert check_short_answer(chat(f"u {ESSAY}", "a " + "A long answer. " * 10), 0.05, 30) == (True, "")


@pytest.mark.parametrize("answer", [
    "As an AI language model, I cannot help with that request.",
    "I'm sorry, but as an AI I am not able to answer this.",
    "I cannot provide that information. As a large language model, I don't have personal opinions.",
])
def test_refusals(answer):
    assert check_refusal(chat("u What is 3 + 4?", f"a {answer}")) == (False, "refusal")


def test_repetition_of_ngrams_and_lines():
    assert check_repetition(chat("u Sort 1 2 3.", "a " + " ".join(["1 2 3"] * 40)), 0.3, 0.3)[1] == "repetition"
    lines = "\n".join(["The answer is 7."] * 15)
    assert check_repetition(chat("u What is 3 + 4?", f"a {lines}"), 0.3, 0.3)[1] == "repetition"
    prose = "The river runs past the old mill, then turns east where the valley opens toward the sea."
    assert check_repetition(chat("u Describe it.", f"a {prose}"), 0.3, 0.3) == (True, "")


def test_length_counts_tokens_only_when_it_could_matter():
    calls = []

    def count(text):
        calls.append(text)
        return len(text)

    assert check_length(chat("u short", "a 7"), count, 256) == (True, "")
    assert calls == []  # under the byte bound: no tokenizing
    assert check_length(chat("u " + "word " * 100, "a 7"), count, 256) == (False, "over_long")


def test_language_is_judged_only_on_enough_text_with_confidence():
    french = chat("u Quelle est la capitale de Kalo ? Je voudrais le savoir pour mon voyage.",
                  "a La capitale de ce pays est Ven, une très belle ville avec beaucoup de musées.")
    assert check_language(french, ["en"], 60, 0.9) == (False, "other_language")
    assert check_language(french, ["en", "fr"], 60, 0.9) == (True, "")
    assert check_language(french, [], 60, 0.9) == (True, "")
    # too little text to judge: kept whatever the identifier would say
    assert check_language(chat("u Sort 7 2 9.", "a 2 7 9"), ["en"], 60, 0.9,
                          identify=lambda text: ("xx", 1.0)) == (True, "")
    # an unsure verdict does not drop
    assert check_language(french, ["en"], 10, 0.9, identify=lambda text: ("fr", 0.5)) == (True, "")


def test_identify_language_matches_langid():
    from langid.langid import LanguageIdentifier, model

    reference = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    for text in ["What is the capital of Zentovtov?", "Wie heißt die Hauptstadt von Kalo? Ich möchte es wissen.",
                 "¿Cuál es la capital de este país? Quiero saberlo para mi viaje."]:
        lang, prob = identify_language(text)
        ref_lang, ref_prob = reference.classify(text)
        assert lang == ref_lang and prob == pytest.approx(ref_prob, abs=1e-6)


def test_filters_can_be_turned_off():
    settings = CurateConfig(drop_refusals=False, languages=[])
    chain = build_filters(settings, None, 256)
    refusal = chat("u What is 3 + 4?", "a As an AI language model, I cannot help with that request.")
    assert first_failure(refusal, chain) == ""


def test_quality_prefers_substance():
    assert quality_score(CLEAN[3]) > quality_score(CLEAN[0])
