"""The filters of what an answer says (issue 12): each on rows it must drop and on rows it must keep,
the English-only ones only on English rows, and per-source caps and weights."""

import pytest

from pipelines.config import CurateConfig
from pipelines.curate import english
from pipelines.curate.filters import (
    AdequacyFilter,
    EchoFilter,
    NonWordFilter,
    PlaceholderFilter,
    RefusalClassifierFilter,
    RelatednessFilter,
    build_filters,
    english_rows,
    first_failures,
)
from pipelines.curate.reasons import (
    CLASSIFIED_REFUSAL,
    ECHOED_PROMPT,
    INADEQUATE_ANSWER,
    KEPT,
    NON_WORDS,
    OVER_SOURCE_CAP,
    OVER_SOURCE_WEIGHT,
    PLACEHOLDER,
    UNRELATED_ANSWER,
)
from pipelines.curate.select import over_quota, source_quotas


def chat(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


SHORT_RIGHT = [
    chat("What is 7 x 8?", "56"),
    chat("Translate 'cat' into French.", "chat"),
    chat("Is London north of Paris?", "Yes."),
    chat("Classify the sentiment as positive or negative: 'I loved it.'", "Positive"),
    chat("What is the capital of Zentovtov?", "Xanpel"),
    chat("List three primary colours.", "Red, blue, yellow."),
    chat("Write one word that rhymes with cat.", "Hat."),
    chat("Extract the names: Alice met Bob and Carol at the station.", "Alice, Bob, Carol"),
    chat("What is the capital of France?", "The capital of France is Paris."),
]


@pytest.mark.parametrize("messages", SHORT_RIGHT)
def test_short_right_answers_pass_the_cheap_checks(messages):
    chain = [PlaceholderFilter(), EchoFilter(0.8), NonWordFilter(0.5), AdequacyFilter(4)]
    assert first_failures([messages], chain) == [KEPT]


@pytest.mark.parametrize(("check", "reason", "messages"), [
    (AdequacyFilter(4), INADEQUATE_ANSWER, chat("Explain how a refrigerator keeps food cold.", "Refrigerant.")),
    (AdequacyFilter(4), INADEQUATE_ANSWER, chat("Write a short story about a lighthouse.", "Sure.")),
    (AdequacyFilter(4), INADEQUATE_ANSWER, chat("How do I fix a leaking tap?", "idk")),
    (AdequacyFilter(4), INADEQUATE_ANSWER, chat("List some good habits for a tidy home.", "Cleaning")),
    (EchoFilter(0.8), ECHOED_PROMPT, chat("How do I make cold brew coffee at home?", "So you're asking how to make cold brew coffee?")),
    (EchoFilter(0.8), ECHOED_PROMPT, chat('Translate "Where is the train station?" into German.', "Where is the train station?")),
    (EchoFilter(0.8), ECHOED_PROMPT, chat("How does a blockchain work?", "How a blockchain works.")),
    (PlaceholderFilter(), PLACEHOLDER, chat("Write a welcome message.", "Lorem ipsum dolor sit amet, consectetur adipiscing.")),
    (PlaceholderFilter(), PLACEHOLDER, chat("Explain inflation.", "TODO: write the explanation here")),
    (PlaceholderFilter(), PLACEHOLDER, chat("Give a brief history of the bicycle.", "[ANSWER]")),
    (PlaceholderFilter(), PLACEHOLDER, chat("Summarise Hamlet.", "N/A")),
    (PlaceholderFilter(), PLACEHOLDER, chat("How do I install Node?", "Step 1: ...\nStep 2: ...\nStep 3: ...")),
    (NonWordFilter(0.5), NON_WORDS, chat("Recommend a book.", "asdfgh jkl qwerty sdkjfh")),
    (NonWordFilter(0.5), NON_WORDS, chat("Describe the Renaissance.", "wertyu wertyu werty")),
])
def test_each_filter_drops_its_junk_for_its_own_reason(check, reason, messages):
    assert check(messages) == (False, reason)


@pytest.mark.parametrize("messages", [
    chat("Write a cover letter for a barista job.", "Dear Ms Lee, I would love to join your cafe as a barista. "
         "I have two years of experience making espresso drinks and serving customers at a busy bakery, "
         "and I enjoy early shifts. Sincerely, [Your Name]"),
    chat("What does TODO mean in code comments?", "A TODO marks work still to be done, e.g. # TODO: handle errors."),
    chat("Fill in the template: Dear [NAME],", "Dear [NAME], thank you for your order."),
])
def test_placeholders_that_belong_are_kept(messages):
    assert PlaceholderFilter()(messages) == (True, KEPT)


def test_non_words_are_spelt_unlike_english_and_names_are_not():
    assert [english.is_non_word(t) for t in ["asdfgh", "sdkjfh", "wertyu", "hjkl"]] == [True] * 4
    assert [english.is_non_word(t) for t in ["Xanpel", "Zentovtov", "rhythm", "idk", "photosynthesis"]] == [False] * 5


def test_english_only_filters_judge_only_english_rows():
    german = chat("Beschreibe bitte ausführlich, wie man einen Lebenslauf für eine Bewerbung schreibt.", "Ja.")
    several = english_rows(CurateConfig(languages=["en", "de"]))
    assert AdequacyFilter(4, judges=several)(german) == (True, KEPT)
    assert english_rows(CurateConfig(languages=["de"])) is None  # English not allowed: the English checks do not run
    # without English, the English-only checks (the MiniLM classifier and relatedness) are not built; non-words
    # (by keyboard shape) and adequacy (by the verbs of de/fr/es) judge the languages they know
    names = [f.name for f in build_filters(CurateConfig(languages=["de", "fr"]), None, 256)]
    assert "refusal_classifier" not in names and "answer_relatedness" not in names
    assert {"prompt_echo", "non_word_text", "answer_adequacy"} <= set(names)


def test_refusal_classifier_and_relatedness_on_the_bundled_model():
    refusals = RefusalClassifierFilter(0.5)
    assert refusals.reasons([
        chat("How do I sharpen a knife?", "That's not something I'm comfortable helping with, sorry."),
        chat("Write a haiku.", "I'm afraid that falls outside what I can do for you today."),
        chat("Is it safe to eat raw dough?", "It can be risky: raw flour and eggs may carry bacteria, so bake it."),
        chat("What is 7 x 8?", "56"),
    ]) == [CLASSIFIED_REFUSAL, CLASSIFIED_REFUSAL, KEPT, KEPT]
    related = RelatednessFilter(0.2)
    assert related.reasons([
        chat("What's a healthy breakfast I can make in five minutes?", "You should ask someone who cares."),
        chat("What's a healthy breakfast I can make in five minutes?", "Overnight oats: mix oats with milk."),
        chat("What is 7 x 8?", "56"),
    ]) == [UNRELATED_ANSWER, KEPT, KEPT]


def test_source_quotas_cap_then_share_without_repeating_rows():
    capped, weighted = source_quotas({"a": 100, "b": 40}, {"a": 60, "b": None}, None)
    assert capped == weighted == {"a": 60, "b": 40}
    capped, weighted = source_quotas({"a": 100, "b": 40}, {"a": None, "b": None}, {"a": 3.0, "b": 1.0})
    assert capped == {"a": 100, "b": 40} and weighted == {"a": 100, "b": 33}  # a is scarcest for a 3:1 mix
    capped, weighted = source_quotas({"a": 100, "b": 40}, {"a": 30, "b": None}, {"a": 1.0, "b": 1.0})
    assert weighted == {"a": 30, "b": 30}


def test_over_quota_is_deterministic_and_counted_by_reason():
    ids = [f"a:{i}" for i in range(50)] + [f"b:{i}" for i in range(20)]
    sources = ["a"] * 50 + ["b"] * 20
    over = over_quota(ids, sources, {"a": 30, "b": None}, {"a": 1.0, "b": 1.0}, seed=0)
    assert len(over[OVER_SOURCE_CAP]) == 20 and len(over[OVER_SOURCE_WEIGHT]) == 10
    assert over == over_quota(ids, sources, {"a": 30, "b": None}, {"a": 1.0, "b": 1.0}, seed=0)
    assert over != over_quota(ids, sources, {"a": 30, "b": None}, {"a": 1.0, "b": 1.0}, seed=1)
    assert all(i.startswith("a:") for i in over[OVER_SOURCE_CAP] + over[OVER_SOURCE_WEIGHT])
