"""Which instructions are open (explain, describe, write, compare, list, how, why: they ask for substance) and
which are closed (what is, yes or no, translate, classify, one word: a word may answer them), in the languages
whose verbs this module knows (``LANGUAGES``).

    python -c "from pipelines.curate.instructions import open_verb; print(open_verb('Explain how tides work.'))"
"""

from __future__ import annotations

import re

LANGUAGES = frozenset({"en", "de", "fr", "es"})

# An open instruction's verb opens the prompt or a sentence of it, or follows a polite lead-in ("Can you
# explain ...", "Könntest du ... erklären" is caught by its own verb form)
LEAD = (r"(?:^|[.!?:;\n¿¡]\s*|\b(?:please|pls|can you|could you|would you|will you|i need you to|i want you to|"
        r"help me|i'd like you to|try to|bitte|kannst du|könntest du|können sie|pourriez-vous|peux-tu|"
        r"pouvez-vous|s'il te plaît|s'il vous plaît|puedes|podrías|por favor)\s+)")
ENGLISH_VERBS = (
    r"explain|describe|discuss|elaborate(?: on)?|compare|contrast|analy[sz]e|summari[sz]e|outline|"
    r"write|draft|compose|create|generate|list|brainstorm|suggest|propose|recommend|design|develop|implement|"
    r"plan|help me|tell me (?:about|how|why|what)|walk me through|teach me|show me how|share (?:some|a few)|"
    r"give (?:me |us )?(?:an? |some |the |a few |\w+ )?(?:overview|explanation|description|summary|examples?|"
    r"list|rundown|breakdown|tips|ideas|steps|reasons|advice|feedback|suggestions|recommendations|pointers|"
    r"guide|plan|outline)|any (?:tips|ideas|advice|suggestions|recommendations)|"
    r"how (?:do|does|can|could|should|would|to|did|might)\b(?! you say)|"
    r"what(?:'s| is| are) (?:the best|a good|some|the main|the key|the differences?|the benefits|the advantages|"
    r"the pros|the steps|the ways|the causes|the effects|the impacts?|the risks|the rules)|why")
GERMAN_VERBS = (
    r"erkläre?n?|erklär|beschreibe?n?|beschreib|schreibe?n?|schreib|verfasse?n?|erzähle?n?|erzähl|"
    r"vergleiche?n?|fasse|liste|nenne (?:mir )?(?:einige|ein paar|\d+)|gib mir (?:tipps|ideen|beispiele|"
    r"einen überblick|ratschläge)|wie (?:kann|mache|macht|funktioniert|funktionieren|bereite|schreibe|lerne)|"
    r"warum|weshalb|wieso")
FRENCH_VERBS = (
    r"explique[rz]?|décri[st]|décrivez|écri[st]|écrivez|rédige[rz]?|raconte[rz]?|compare[rz]?|résume[rz]?|"
    r"liste[rz]?|donne-moi (?:des|quelques)|comment (?:faire|puis-je|fonctionne|fonctionnent|préparer|"
    r"écrire|apprendre)|pourquoi")
SPANISH_VERBS = (
    r"explica[rn]?|explique|describa|escribe|escriba|escribir|redacta|cuéntame|compara|resume|enumera|"
    r"dame (?:ideas|consejos|ejemplos|algunos|algunas)|cómo (?:puedo|hago|funciona|funcionan|se hace|preparo)|"
    r"por qué")
OPEN_INSTRUCTION = re.compile(
    LEAD + r"(?P<verb>" + "|".join((ENGLISH_VERBS, GERMAN_VERBS, FRENCH_VERBS, SPANISH_VERBS)) + r")\b",
    re.IGNORECASE)
# ... unless the prompt asks for something small: one word, a title, yes or no, the result only
CLOSED_REQUEST = re.compile(
    r"\b(?:in |with |using )?(?:one|a single|1|two|three|2|3) words?\b|\byes or no\b|\btrue or false\b|"
    r"\b(?:only|just) (?:the|a|one|with)\b|\b(?:result|answer|number|name) only\b|"
    r"\b(?:a|one|an?) (?:title|name|word|number|headline|slogan|synonym|antonym|tagline|hashtag|emoji|"
    r"letter|label|category|rhyme|acronym|abbreviation|pun|nickname)\b|\bone[- ]liner\b|"
    r"\bin (?:einem|einem einzigen) wort\b|\bja oder nein\b|\bnur (?:die|das|den|mit)\b|"
    r"\ben un (?:seul )?mot\b|\boui ou non\b|\bvrai ou faux\b|\ben una (?:sola )?palabra\b|\bs[ií] o no\b|"
    r"\bverdadero o falso\b",
    re.IGNORECASE)
# A translation's answer is in the target language: an English word there ("chat" for "cat" in French) says
# nothing about whether it answers
TRANSLATION_REQUEST = re.compile(r"\b(?:translat\w*|übersetz\w*|tradu\w*|in (?:english|french|german|spanish|"
                                 r"italian|portuguese|dutch|japanese|chinese|russian))\b", re.IGNORECASE)
LIST_VERBS = re.compile(r"^(?:list|brainstorm|suggest|give|any|liste|nenne|gib|donne|dame|enumera)", re.IGNORECASE)
LIST_ITEM_BREAK = re.compile(r"[,;\n]|\b(?:and|or|und|oder|et|ou|y|o)\b")


def open_verb(prompt: str) -> str | None:
    """The verb that makes ``prompt`` an open instruction (explain, write, list, ...), or None when it is a
    closed question or asks for something small ("Write one word that rhymes with cat")."""
    match = OPEN_INSTRUCTION.search(prompt)
    if match is None or CLOSED_REQUEST.search(prompt):
        return None
    return match.group("verb").lower()


def list_items(answer: str) -> int:
    """How many items an answer lists (parts between commas, semicolons, lines, 'and', 'or')."""
    return sum(1 for part in LIST_ITEM_BREAK.split(answer) if re.search(r"\w", part))


def asks_for_something_small(prompt: str) -> bool:
    """Whether ``prompt`` asks for one word, a name, yes or no, the result only: a short answer is what it wants."""
    return CLOSED_REQUEST.search(prompt) is not None


def asks_for_translation(prompt: str) -> bool:
    """Whether ``prompt`` asks to translate or to say something in a named language."""
    return TRANSLATION_REQUEST.search(prompt) is not None
