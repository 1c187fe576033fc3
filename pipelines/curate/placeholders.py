"""What a stand-in for an unwritten answer looks like, in any language: template slots, to-do marks, filler text.

    python -c "from pipelines.curate.placeholders import is_placeholder; print(is_placeholder('[ANSWER]'))"  # True

A stand-in is made of slots ([NAME], <insert ...>, {{answer}}, ${VAR}, ___), to-do marks (TODO, TBD, FIXME),
stand-in phrases (lorem ipsum, "goes here", "to be added", "coming soon"), code stubs (a body of ``pass``,
``...`` or "your code here") or ellipses where the content should be. A real answer may hold one or two of
these (a letter signed "[Your Name]", a command with ``<your-repo-url>``, a ``# TODO`` in working code), so
an answer is a placeholder only when stand-ins are most of what it says.
"""

from __future__ import annotations

import re

from pipelines.curate.filter_base import words

# A template slot: brackets around an upper-case name or a stand-in word, not after a word character (so
# ``items[0]``, ``a[N]`` and ``dict[str]`` are indexing), nor a log level ([INFO]), a character class ([A-Z])
# or a Markdown link; <NAME> or <your ...> but no HTML tag; {{...}}, ${...}, %(name)s; a blank "Name: ____"
STAND_IN_WORDS = (r"insert|add|your|enter|placeholder|fill(?:ed)?(?: in)?|answer|response|text|content|"
                  r"name|here|tbd|todo|to be|example|sample|describe|explain|write|list|details?|paragraph|"
                  r"summary|code|steps?|recommendations?|description|title|topic|reason|point")
SLOT = re.compile(
    r"(?<![\w)\]^])\[\s*(?:(?!(?:INFO|ERROR|WARN\w*|DEBUG|OK|PASS|FAIL\w*)\])(?![A-Z0-9]-[A-Z0-9]\])"
    r"[A-Z][A-Z0-9 _/.&'-]{0,40}|\.\.\.|…|(?i:(?:" + STAND_IN_WORDS + r")\b[^\]\n]{0,60}))\](?!\()"
    r"|(?<![\w)\]])<\s*(?:[A-Z][A-Z0-9_ -]{1,40}|(?i:(?:insert|your|enter|placeholder|fill in|answer|response|add)"
    r"\b[^>\n]{0,60}))>"
    r"|(?<![\w)\]])\(\s*(?i:(?:insert|add|your|enter|placeholder|fill in|to be|tbd|todo)\b[^)\n]{0,60})\)"
    r"|\{\{[^{}\n]{1,60}\}\}|\$\{[^{}\n]{1,40}\}|%\(\w+\)s|<!--.*?-->"
    r"|\b[A-Z]+_(?:PLACEHOLDER|HERE|TBD|TODO)\b|(?<=\S )_{3,}")
TODO_MARK = re.compile(r"\b(?:TODO|TBD|FIXME|TK|WIP)\b")  # upper case only: "todo" is Spanish for "all"
STAND_IN_PHRASE = re.compile(
    r"\blorem ipsum\b|\bdolor sit amet\b|\bipsum dolor\b|\bblah(?:[ ,]+blah)+\b|"
    r"\b(?:answer|response|text|content|code|explanation|description|summary|details?) (?:goes|will go|to go) here\b|"
    r"\b(?:your|the|insert|add|put|write) (?:answer|response|text|content|code|explanation|summary|reply) here\b|"
    r"\b(?:to be|will be) (?:added|written|completed|filled in|determined|confirmed|announced|provided|updated)\b|"
    r"\bfill(?:ed)? in (?:later|soon|here|below)\b|\b(?:add|write|finish|complete) (?:this |it )?later\b|"
    r"\bcoming soon\b|\bwork in progress\b|\bnot yet written\b|\b(?:answer|response) pending\b|"
    r"\bpending (?:answer|response)\b|\bplaceholder\b|"
    r"\b(?:sample|example|dummy|test|fake|generic|default) (?:answer|response|text|content|output)\b",
    re.IGNORECASE)
# the whole answer is one stand-in word
STAND_IN_ANSWER = re.compile(
    r"^\W*(?:n/?a|null|nil|undefined|pending|tbd|todo|tk|wip|placeholder|x{3,}|"
    r"(?:answer|response|text|content|output)(?: here)?|\[\s*\]|\{\s*\}|<\s*>|\(\s*\)|_{2,}|\.\.\.|…)\W*$",
    re.IGNORECASE)
# a code body that does nothing: pass, ..., raise NotImplementedError, or a comment saying code goes here
STUB_LINE = re.compile(
    r"^\s*(?:pass|\.\.\.|…|raise NotImplementedError(?:\(.*\))?|throw new Error\(['\"]not implemented['\"]\);?|"
    r"unimplemented!\(\)|todo!\(\)|(?://|#|--|/\*)\s*(?:TODO|FIXME|your code|code goes|implement|\.\.\.).*)\s*$",
    re.IGNORECASE)
CODE_SCAFFOLD = re.compile(r"^\s*(?:```\w*|def .*:|function .*\{|func .*\{|fn .*\{|class .*[:{]|[{}]|end)\s*$")
LOREM_IPSUM = re.compile(r"\blorem ipsum\b|\bdolor sit amet\b", re.IGNORECASE)  # filler text, never an answer
LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.):]|(?:step|item|point|part)\s*\d+\s*[.):]?|[a-z][.)])\s*",
                         re.IGNORECASE)
ELLIPSIS = re.compile(r"\.\.\.|…")
# fewer words than this beside a stand-in: the stand-in is the answer ("TODO: write answer", "Here: [ANSWER]")
MIN_OTHER_WORDS = 8
# stand-ins outnumbering this share of an answer's words make it a template rather than an answer that
# happens to hold a slot or two
MAX_STAND_IN_SHARE = 0.15


def stand_ins(text: str) -> int:
    """How many slots, to-do marks and stand-in phrases ``text`` holds."""
    return len(SLOT.findall(text)) + len(TODO_MARK.findall(text)) + len(STAND_IN_PHRASE.findall(text))


def without_stand_ins(text: str) -> str:
    return STAND_IN_PHRASE.sub(" ", TODO_MARK.sub(" ", SLOT.sub(" ", text)))


def is_code_stub(answer: str) -> bool:
    """A code answer whose every line is scaffolding (fences, a signature, braces) or a stub, with a stub."""
    lines = [line for line in answer.splitlines() if line.strip()]
    return any(STUB_LINE.match(line) for line in lines) and \
        all(STUB_LINE.match(line) or CODE_SCAFFOLD.match(line) for line in lines)


def is_placeholder(answer: str, min_other_words: int = MIN_OTHER_WORDS) -> bool:
    """An answer that is a stand-in: one stand-in word for the whole of it; a code stub; lorem ipsum; ellipses
    where every line's content should be, or a list of bullets with nothing after them; or stand-ins with fewer than ``min_other_words`` other words, or more
    than ``MAX_STAND_IN_SHARE`` of its words (a form letter of [NAME], [COMPANY] and [X] years)."""
    if STAND_IN_ANSWER.match(answer) or is_code_stub(answer) or LOREM_IPSUM.search(answer):
        return True
    lines = [LIST_MARKER.sub("", line) for line in answer.splitlines() if line.strip()]
    if lines and all(ELLIPSIS.search(line) and len(words(ELLIPSIS.sub(" ", line))) <= 3 for line in lines):
        return True
    if len(lines) >= 2 and not any(words(line) for line in lines):  # a list of numbered or bulleted nothing
        return True
    marks = stand_ins(answer)
    if not marks:
        return False
    other = len(words(without_stand_ins(answer)))
    return other < min_other_words or marks > MAX_STAND_IN_SHARE * other


def asks_for_a_template(prompt: str) -> bool:
    """A prompt that holds stand-ins itself (a template to fill, "What does TODO mean?") or asks for a template:
    its answer may hold them too."""
    return stand_ins(prompt) > 0 or STAND_IN_ANSWER.match(prompt) is not None or \
        re.search(r"\b(?:template|placeholder|fill[- ]in|blanks?|form letter|mad ?libs?|boilerplate|scaffold|"
                  r"skeleton|stub|outline|lorem)", prompt, re.IGNORECASE) is not None
