"""Each filter on the cases it must drop and the clean rows it must keep."""

import pytest

from pipelines.config import CurateConfig
from pipelines.curate.filters import (
    AdequacyFilter,
    EchoFilter,
    EmptyAnswerFilter,
    LanguageFilter,
    LengthFilter,
    NonWordFilter,
    PlaceholderFilter,
    RefusalClassifierFilter,
    RefusalFilter,
    RepeatedLinesFilter,
    RepeatedNgramsFilter,
    ShortAnswerFilter,
    TurnOrderFilter,
    build_filters,
    first_failure,
    first_failures,
    identify_language,
)
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
from pipelines.curate.select import quality_score
from pipelines.curate.token_count import chat_token_counter


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
    chain = build_filters(CurateConfig(), lambda rows: [sum(len(m["content"].split()) for m in row) for row in rows],
                          256)
    assert first_failure(messages, chain) == ""


@pytest.mark.parametrize("messages", [
    chat("a 7", "u What is 3 + 4?"),
    chat("u What is 3 + 4?", "u What is 3 + 4?", "a 7"),
    chat("u What is 3 + 4?"),
    chat("u ", "a 7"),
    chat("s Be brief."),
])
def test_bad_turns(messages):
    assert TurnOrderFilter()(messages) == (False, BAD_TURNS)


@pytest.mark.parametrize("answer", ["", "   ", "\n"])
def test_empty_answer(answer):
    assert EmptyAnswerFilter()(chat("u What is 3 + 4?", f"a {answer}")) == (False, EMPTY_ANSWER)


def test_short_answer_needs_a_long_prompt():
    short_answer = ShortAnswerFilter(0.05, 30)
    assert short_answer(chat(f"u {ESSAY}", "a Yes.")) == (False, SHORT_ANSWER)
    assert short_answer(chat("u What is 3 + 4?", "a 7")) == (True, "")
    assert short_answer(chat(f"u {ESSAY}", "a " + "A long answer. " * 10)) == (True, "")


@pytest.mark.parametrize("answer", [
    "As an AI language model, I cannot help with that request.",
    "I'm sorry, but as an AI I am not able to answer this.",
    "I cannot provide that information. As a large language model, I don't have personal opinions.",
])
def test_refusals(answer):
    assert RefusalFilter()(chat("u What is 3 + 4?", f"a {answer}")) == (False, REFUSAL)


def test_repeated_ngrams_and_repeated_lines_are_told_apart():
    repeated_ngrams, repeated_lines = RepeatedNgramsFilter(0.3), RepeatedLinesFilter(0.3)
    one_line = chat("u Sort 1 2 3.", "a " + " ".join(["1 2 3"] * 40))
    assert repeated_ngrams(one_line)[1] == REPEATED_NGRAMS
    assert repeated_lines(one_line) == (True, "")
    lines = chat("u What is 3 + 4?", "a " + "\n".join(["The answer is 7."] * 15))
    assert repeated_lines(lines)[1] == REPEATED_LINES
    # a repeated line repeats its n-grams too: the chain checks lines first, so it names the lines
    chain = build_filters(CurateConfig(), None, 256)
    assert (first_failure(one_line, chain), first_failure(lines, chain)) == (REPEATED_NGRAMS, REPEATED_LINES)
    prose = chat("u Describe it.", "a The river runs past the old mill, then turns east where the valley opens "
                                   "toward the sea.")
    assert repeated_ngrams(prose) == repeated_lines(prose) == (True, "")


def test_length_counts_the_conversation_as_the_chat_template_renders_it(tiny_model_path):
    """Issue 9/11: no per-turn "+4" or byte bound; the model's own template and tokenizer count the row."""
    from pipelines.config import ModelConfig

    count = chat_token_counter(ModelConfig(base=str(tiny_model_path)).model_dump_json())
    symbols = chat("u }{)(*&^%$#@!", "a ~`|\\")  # no merges: a token per byte, plus the template's own
    fits = chat("u What is 3 + 4?", "a 7")
    heuristic = sum(len(m["content"].encode()) + 4 for m in symbols)
    length = LengthFilter(count, max_tokens=heuristic)
    assert count([symbols])[0] > heuristic >= count([fits])[0]
    assert length.reasons([symbols, fits]) == [OVER_LONG, KEPT]
    assert length(symbols) == (False, OVER_LONG) and length(fits) == (True, KEPT)


def test_a_row_the_template_cannot_render_is_a_template_error():
    def count(conversations):
        return [None if m[0]["role"] == "system" else 5 for m in conversations]

    length = LengthFilter(count, max_tokens=4)
    assert length.reasons([chat("s Be brief.", "u Hi", "a Hello"), chat("u Hi", "a Hello")]) == [TEMPLATE_ERROR,
                                                                                                  OVER_LONG]


def test_first_failures_runs_each_filter_on_the_rows_the_earlier_ones_kept():
    seen = []

    def count(conversations):
        seen.append(len(conversations))
        return [1] * len(conversations)

    chain = build_filters(CurateConfig(languages=[]), count, 256)
    rows = [chat("u What is 3 + 4?", "a 7"), None, chat("a 7", "u What is 3 + 4?"), chat("u Hi", "a  ")]
    assert first_failures(rows, chain) == [KEPT, KEPT, BAD_TURNS, EMPTY_ANSWER]
    assert seen == [1]  # the length filter tokenised the one row still standing, in one call


def test_language_is_judged_only_on_enough_text_with_confidence():
    french = chat("u Quelle est la capitale de Kalo ? Je voudrais le savoir pour mon voyage.",
                  "a La capitale de ce pays est Ven, une très belle ville avec beaucoup de musées.")
    assert LanguageFilter(("en",), 60, 0.9)(french) == (False, OTHER_LANGUAGE)
    assert LanguageFilter(("en", "fr"), 60, 0.9)(french) == (True, "")
    assert LanguageFilter((), 60, 0.9)(french) == (True, "")
    # too little text to judge: kept whatever the identifier would say
    assert LanguageFilter(("en",), 60, 0.9, identify=lambda text: ("xx", 1.0))(
        chat("u Sort 7 2 9.", "a 2 7 9")) == (True, "")
    # an unsure verdict does not drop
    assert LanguageFilter(("en",), 10, 0.9, identify=lambda text: ("fr", 0.5))(french) == (True, "")


def test_identify_language_matches_langid():
    from langid.langid import LanguageIdentifier, model

    reference = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    for text in ["What is the capital of Zentovtov?", "Wie heißt die Hauptstadt von Kalo? Ich möchte es wissen.",
                 "¿Cuál es la capital de este país? Quiero saberlo para mi viaje."]:
        lang, prob = identify_language(text)
        ref_lang, ref_prob = reference.classify(text)
        assert lang == ref_lang and prob == pytest.approx(ref_prob, abs=1e-6)


def test_filters_can_be_turned_off():
    settings = CurateConfig(drop_refusals=False, languages=[], refusal_classifier_threshold=None,
                            min_answer_relatedness=None)
    chain = build_filters(settings, None, 256)
    refusal = chat("u What is 3 + 4?", "a As an AI language model, I cannot help with that request.")
    assert first_failure(refusal, chain) == ""


def test_quality_prefers_substance():
    assert quality_score(CLEAN[3]) > quality_score(CLEAN[0])


def test_the_chain_is_named_filters_in_order():
    chain = build_filters(CurateConfig(), len, 256)
    assert [f.name for f in chain] == ["turn_order", "answer_chars", "refusal_phrases", "prompt_echo",
                                       "line_repetition", "ngram_repetition", "answer_ratio", "placeholder_text",
                                       "non_word_text", "token_length", "language_id", "answer_adequacy",
                                       "refusal_classifier", "answer_relatedness"]
    assert [f.reason for f in chain] == [BAD_TURNS, EMPTY_ANSWER, REFUSAL, ECHOED_PROMPT, REPEATED_LINES,
                                         REPEATED_NGRAMS, SHORT_ANSWER, PLACEHOLDER, NON_WORDS, OVER_LONG,
                                         OTHER_LANGUAGE, INADEQUATE_ANSWER, CLASSIFIED_REFUSAL, UNRELATED_ANSWER]


# --- what an answer says (issue 12): rows each filter must drop with its reason, and rows it must keep ------

def not_english(messages):
    return False


@pytest.mark.parametrize("prompt, answer", [
    ("Explain how tides work.", "[ANSWER]"),
    ("Explain how tides work.", "TODO: write answer"),
    ("Describe the water cycle.", "{{response}}"),
    ("Summarise the plot of Hamlet.", "N/A"),
    ("Give a fun fact about owls.", "<!-- answer -->"),
    ("How do I install Rust?", "Step 1: ...\nStep 2: ...\nStep 3: ..."),
    ("List three uses of copper.", "1.\n2.\n3."),
    ("Write a function that reverses a list.", "```python\ndef reverse(items):\n    pass\n```"),
    ("Write a haiku about rain.", "Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
    ("Write a cover letter for a nurse.", "Dear [NAME],\n\nI am applying for [POSITION] at [HOSPITAL]. I have [X] "
                                          "years of experience.\n\nSincerely,\n[YOUR NAME]"),
    ("Describe the Moon.", "Content coming soon."),
    ("Erkläre die Photosynthese.", "[ANTWORT]"),
])
def test_placeholders_are_dropped(prompt, answer):
    assert PlaceholderFilter()(chat(f"u {prompt}", f"a {answer}")) == (False, PLACEHOLDER)


@pytest.mark.parametrize("prompt, answer", [
    ("How do I clone a repository?", "Run `git clone <your-repo-url>`, then cd into the folder it creates."),
    ("How do I read the first three items?", "Use items[0], items[1] and items[2]; indexing starts at 0."),
    ("Write a thank-you note to Sam for dinner.", "Dear Sam, thank you for the lovely dinner last night; the risotto "
                                                  "was wonderful and I loved meeting your sister. Best, [Your Name]"),
    ("Give a regex for a capitalised word.", "^[A-Z][a-z]+$ matches a capitalised word."),
    ("Which of 4, 6 and 8 are prime?", "None."),
    ("Fix my function.", "def add(a, b):\n    # TODO: handle None\n    return a + b"),
    ("Write a template for a meeting invite.", "Subject: [TOPIC]\nDate: [DATE]\nAgenda: [ITEMS]"),
    ("What does the Maven line mean?", "[INFO] BUILD SUCCESS means Maven compiled and tested everything."),
])
def test_answers_holding_a_slot_or_two_are_kept(prompt, answer):
    assert PlaceholderFilter()(chat(f"u {prompt}", f"a {answer}")) == (True, KEPT)


@pytest.mark.parametrize("answer, english", [
    ("asdfghjkl", True), ("sdkjfh lkjlkj qwpoeiru", True), ("jkjkjkjkjk;;;;;", True),
    ("hgfhgf hgfhgfh ghfhgf", True),
    # rows in another language: the shapes of mashing alone (keyboard rows, repeated units), no word list
    ("asdfgjklöä asdföä jklöä", False), ("xcvxcvxcv nmnmnmnm", False),
])
def test_keyboard_mashing_is_non_words(answer, english):
    check = NonWordFilter(0.5, english=None if not english else (lambda m: True))
    assert check(chat("u Explain how interest rates work.", f"a {answer}")) == (False, NON_WORDS)


@pytest.mark.parametrize("answer, english", [
    ("The capital is Xanpel, on the river Ven.", True), ("nvm, idk", True),
    ("Die Hauptstadt ist Wien, eine schöne Stadt an der Donau.", False),
    ("La capitale est Paris, sur la Seine.", False), ("Strengths: rhythm and breadth.", False),
])
def test_words_and_names_are_kept(answer, english):
    check = NonWordFilter(0.5, english=None if not english else (lambda m: True))
    assert check(chat("u Tell me about it.", f"a {answer}")) == (True, KEPT)


@pytest.mark.parametrize("prompt, answer", [
    ("Explain how a refrigerator keeps food cold.", "Refrigerant."),
    ("Write a short story about a lighthouse.", "Sure."),
    ("Why do leaves change colour in autumn?", "Chlorophyll."),
    ("Could you walk me through setting up a budget?", "Spreadsheet."),
    ("Beschreibe bitte, wie man Brot backt.", "Ja."),
    ("Explique-moi comment fonctionne un moteur.", "Essence."),
    ("Explica cómo funciona la fotosíntesis.", "Luz."),
])
def test_open_instructions_answered_in_a_word_are_inadequate(prompt, answer):
    assert AdequacyFilter(4, english=None)(chat(f"u {prompt}", f"a {answer}")) == (False, INADEQUATE_ANSWER)


@pytest.mark.parametrize("prompt, answer", [
    ("What is 7 x 8?", "56"), ("Translate 'dog' into German.", "Hund"), ("Is Paris in France?", "Yes."),
    ("Classify the sentiment: 'I love it!'", "Positive"), ("Describe the sky in one word.", "Blue."),
    ("List three primary colours.", "Red, yellow, blue"), ("Who wrote Hamlet?", "Shakespeare."),
    ("True or false: the Sun is a star.", "True."), ("Explain why the sky is blue.",
                                                     "Sunlight scatters off air molecules, blue most of all."),
])
def test_short_but_right_answers_are_adequate(prompt, answer):
    assert AdequacyFilter(4, english=None)(chat(f"u {prompt}", f"a {answer}")) == (True, KEPT)


def test_non_answers_are_inadequate_by_the_classifier_and_closed_answers_are_kept():
    check = AdequacyFilter(4)
    dropped = [chat("u When did the Berlin Wall fall?", f"a {answer}") for answer in ("idk lol", "Thx!", "🤷")]
    kept = [chat("u What is the capital of Canada?", "a Ottawa."), chat("u What is 25% of 80?", "a 20"),
            chat("u Is London north of Paris?", "a Yes."), chat("u Translate 'cat' into French.", "a chat"),
            chat("u How do you say 'thank you' in Spanish?", "a gracias")]
    assert check.reasons(dropped + kept) == [INADEQUATE_ANSWER] * 3 + [KEPT] * 5


@pytest.mark.parametrize("prompt, answer", [
    ("Explain how photosynthesis works.", "You want me to explain how photosynthesis works."),
    ("Why is the sea salty?", "Why is the sea salty? That's the question."),
    ("Describe the life cycle of a frog.", "The life cycle of a frog is the life cycle a frog goes through."),
    ("How does a jet engine work?", "How a jet engine works."),
    ("Write a poem about autumn leaves.", "Write a poem about autumn leaves."),
    ("Summarise the causes of the Great Depression.", "This is a summary of the causes of the Great Depression."),
    ("Wie kann ich besser schlafen?", "Wie können Sie besser schlafen?"),
])
def test_answers_that_restate_the_prompt_are_echoes(prompt, answer):
    assert EchoFilter(0.7)(chat(f"u {prompt}", f"a {answer}")) == (False, ECHOED_PROMPT)


@pytest.mark.parametrize("prompt, answer", [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Are whales mammals?", "Yes, whales are mammals."),
    ("Is Python compiled or interpreted?", "Python is interpreted."),
    ("Which is bigger, 3 or 5?", "5"),
    ("What's the currency of Switzerland?", "The Swiss franc (CHF)."),
])
def test_answers_that_add_something_are_not_echoes(prompt, answer):
    assert EchoFilter(0.7)(chat(f"u {prompt}", f"a {answer}")) == (True, KEPT)


@pytest.mark.parametrize("answer", [
    "En tant qu'intelligence artificielle, je n'ai pas d'opinion.",
    "Je suis désolé, mais je ne peux pas vous aider avec cette demande.",
    "Als KI habe ich keine persönliche Meinung.", "Lo siento, pero no puedo ayudarte con eso.",
])
def test_refusal_phrases_in_other_languages(answer):
    assert RefusalFilter()(chat("u Question ?", f"a {answer}")) == (False, REFUSAL)


def test_the_refusal_classifier_drops_refusals_and_boilerplate_and_keeps_answers():
    check = RefusalClassifierFilter(0.6)
    refusals = [chat("u Write a poem about the sea.", "a I'm going to sit this one out, sorry."),
                chat("u Plan a trip to Rome.", "a Travel involves risks, so I won't suggest an itinerary.")]
    answers = [chat("u Is it correct to say 'between you and I'?", "a No, it should be 'between you and me'."),
               chat("u Why won't my code run?", "a It cannot find the module: install it with pip install requests."),
               chat("u Which laptop should I buy?", "a It depends on budget, but for most students a 14-inch "
                                                    "laptop with 16 GB of RAM and a long battery life is best.")]
    assert check.reasons(refusals + answers) == [CLASSIFIED_REFUSAL] * 2 + [KEPT] * 3
