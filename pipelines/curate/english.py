"""What the English-only filters know about English, from ``wordfreq`` (a maintained word-frequency list).

    python -c "from pipelines.curate.english import is_non_word; print(is_non_word('asdfgh'))"   # True

A non-word is a token the list does not hold (or holds only as noise, below ``COMMON_ZIPF``) whose
spelling is unlike English: its letter pairs are rare in the listed words (a letter-bigram model fitted on
the list once per process). So a made-up name ("Xanpel") or a rare real word reads as a word, and keyboard
mashing ("sdkjfh", "hjkl") does not. ``function_words`` are the most frequent words of the list: what two
texts sharing them does not make related.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache

LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)
# a word the list holds at this Zipf frequency or above (about once per 3 million words) is a word however
# it is spelt ("nvm", "idk"); rarer listed entries are often mashing that made it into web text ("asdf", "jkl")
COMMON_ZIPF = 2.5
# mean log-probability of a token's letter pairs below this: not spelt like English. Listed words and
# made-up names sit above -4.3, keyboard mashing below -5 (measured on the list's own words and mashes)
MIN_SPELLING_SCORE = -4.6
BIGRAM_MODEL_WORDS = 50_000
FUNCTION_WORDS = 200


@lru_cache(maxsize=1)
def word_frequencies() -> dict[str, float]:
    """word -> frequency in English (wordfreq's 'best' list), loaded once per process."""
    from wordfreq import get_frequency_dict

    return get_frequency_dict("en")


@lru_cache(maxsize=1)
def letter_bigrams() -> tuple[dict[str, float], dict[str, float]]:
    """(log P(next letter | letter) of each pair, log floor per first letter): a frequency-weighted letter
    bigram model of the list's commonest alphabetic words, with ^ and $ marking a word's ends."""
    from wordfreq import top_n_list

    frequencies = word_frequencies()
    pairs: Counter[str] = Counter()
    firsts: Counter[str] = Counter()
    for word in top_n_list("en", BIGRAM_MODEL_WORDS):
        if not word.isalpha():
            continue
        weight = frequencies[word]
        marked = f"^{word}$"
        for a, b in zip(marked, marked[1:], strict=False):
            pairs[a + b] += weight
            firsts[a] += weight
    log_pair = {pair: math.log(count / firsts[pair[0]]) for pair, count in pairs.items()}
    unseen = {first: math.log(1e-7 / (count + 1e-5)) for first, count in firsts.items()}
    return log_pair, unseen


def spelling_score(token: str) -> float:
    """Mean log-probability of the token's letter pairs under the English bigram model (higher: more English)."""
    log_pair, unseen = letter_bigrams()
    marked = f"^{token.lower()}$"
    logs = [log_pair.get(a + b, unseen.get(a, -16.0)) for a, b in zip(marked, marked[1:], strict=False)]
    return sum(logs) / len(logs)


def zipf(token: str) -> float:
    """wordfreq's Zipf frequency of a lower-cased token (0 when the list does not hold it)."""
    frequency = word_frequencies().get(token, 0.0)
    return math.log10(frequency) + 9 if frequency > 0 else 0.0


# rows of the QWERTY, QWERTZ and AZERTY keyboards: mashing runs along them in any language
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm", "qwertzuiopü", "asdfghjklöä", "yxcvbnm", "azertyuiop",
                 "qsdfghjklm", "wxcvbn")
NEIGHBOURS = {frozenset(row[i:i + 2]) for row in KEYBOARD_ROWS for i in range(len(row) - 1)}
# a token of 4+ letters most of whose letter pairs are neighbouring keys of one row was typed along the row
# ("wertyu"); English words that do this are common ones ("were", "tree"), which the list holds
MAX_KEYBOARD_RUN = 0.6
VOWELS = frozenset("aeiouyàáâäãåæèéêëìíîïòóôöõøùúûüýœ")
REPEATED_UNIT = re.compile(r"^(.{1,2}?)\1{2,}$")  # "jkjkjk", "aaaaaa"; not "tovtov", a made-up name


def keyboard_run_fraction(token: str) -> float:
    """Fraction of the token's adjacent letter pairs that are neighbouring keys on a keyboard row."""
    pairs = [frozenset(token[i:i + 2]) for i in range(len(token) - 1)]
    return sum(pair in NEIGHBOURS for pair in pairs) / len(pairs) if pairs else 0.0


def is_typed_noise(token: str) -> bool:
    """A token shaped like mashing in any language, no word list needed: 5+ letters typed along a keyboard row
    or with no vowel, or 6+ letters that repeat a unit of one or two ("jkjkjk") or stay on one row
    ("ghfjdksla"). Real words of that shape are rare, and never most of an answer."""
    lower = token.lower()
    if len(lower) >= 5 and (keyboard_run_fraction(lower) > MAX_KEYBOARD_RUN or not VOWELS & set(lower)):
        return True
    return len(lower) >= 6 and (REPEATED_UNIT.match(lower) is not None or
                                any(set(lower) <= set(row) for row in KEYBOARD_ROWS))


def is_non_word(token: str) -> bool:
    """A token that is not a common English word and is either spelt unlike English or typed along a row of
    the keyboard."""
    lower = token.lower()
    if zipf(lower) >= COMMON_ZIPF:
        return False
    return spelling_score(lower) < MIN_SPELLING_SCORE or \
        (len(lower) >= 4 and keyboard_run_fraction(lower) > MAX_KEYBOARD_RUN) or is_typed_noise(lower)


def non_word_fraction(text: str, is_noise: Callable[[str], bool] = is_non_word) -> tuple[float, int]:
    """(fraction of the text's letters that are in non-word tokens by ``is_noise``, letters in all): letters,
    not tokens, so a short article or 'a' does not outvote a long mash."""
    tokens = LETTERS.findall(text)
    letters = sum(len(token) for token in tokens)
    if not letters:
        return 0.0, 0
    return sum(len(token) for token in tokens if is_noise(token)) / letters, letters


@lru_cache(maxsize=1)
def function_words() -> frozenset[str]:
    """The commonest English words (the, of, to, how, ...): sharing them does not make two texts related."""
    from wordfreq import top_n_list

    return frozenset(top_n_list("en", FUNCTION_WORDS))


# languages whose commonest words the echo check sets aside (wordfreq lists them all), English first
ENGLISH_WORD_ZIPF = 4.0  # an English word at least this frequent is not another language's function word
COMMON_WORD_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl")


@lru_cache(maxsize=1)
def common_words_any_language() -> frozenset[str]:
    """The commonest words of several languages: what a restatement in any of them is built from besides the
    prompt's own words ("Wie können Sie ..." for "Wie kann ich ..."). Another language's common word that is
    also an English word ("paris" in French) stays content: it can be what an English answer adds."""
    from wordfreq import top_n_list

    others = {word for language in COMMON_WORD_LANGUAGES[1:] for word in top_n_list(language, FUNCTION_WORDS)
              if zipf(word) < ENGLISH_WORD_ZIPF}
    return function_words() | others


def stem(token: str) -> str:
    """A crude English stem: 'works' and 'work', 'asked' and 'ask', 'goes' and 'go' compare equal."""
    if token.endswith("oes") and len(token) > 3:
        return token[:-2]
    for suffix in ("ing", "ed", "es", "s"):
        if len(token) > len(suffix) + 2 and token.endswith(suffix):
            return token[:-len(suffix)]
    return token


def content_words(text: str) -> list[str]:
    """Stems of the lower-cased word and number tokens that are not function words (nor one or two letters:
    the "re" of "you're", the "d" of "you'd")."""
    common = function_words()
    stems = [stem(token) for token in re.findall(r"\w+", text.lower())
             if token not in common and (len(token) > 2 or token.isdigit())]
    return [token for token in stems if token not in common]
