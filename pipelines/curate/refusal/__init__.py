"""The answer-kind classifier: multinomial logistic regression over the bundled MiniLM's sentence embeddings.

    python -m pipelines.curate.refusal.fit     # refits it on examples.py and rewrites weights.json

It tells three kinds of text in an answer's place apart (``KINDS``): an answer that does the task (also one
that mentions a limitation and then answers, or a one-word answer to a closed question); a refusal, a
deflection or AI boilerplate; and a non-answer ("ok", "see above", "?") that neither answers nor declines.
The refusal filter drops by the second, the adequacy filter by the third. ``has_cue`` is the cheap gate in
front of the refusal check: an answer with none of its words (sorry, cannot, AI, policy, help, ...) is not
embedded for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

WEIGHTS = Path(__file__).with_name("weights.json")
KINDS = ("answer", "refusal", "non_answer")
ANSWER, REFUSAL, NON_ANSWER = range(3)
# Words a refusal, a deflection or AI boilerplate cannot do without; every training refusal holds one in its
# opening (``OPENING`` characters), where a refusal says what it is
CUES = re.compile(
    r"\b(?:not|no|never|nope|n't|n’t|cannot|can ?not|sorry|apolog\w*|regret\w*|unfortunately|afraid|unable|"
    r"declin\w*|sadly|off the table|unanswered|refus\w*|refrain|rather|prefer|pass|turn down|off-limits|outside|beyond|restrict\w*|prevents?|"
    r"lack|capabilit\w*|expertise|allowed|permitted|comfortable|my place|stop here|say no|den(?:y|ied)|"
    r"willing|skip|yourself|your own|step back|a human|matters most|draw the line|principles?|conscience|count me out|sit this|"
    r"ai|artificial intelligence|language model|model|assistant|chatbot|bot|program\w*|machine|virtual|"
    r"trained|training|knowledge|cutoff|real-time|internet|web|browse|access|update|current|"
    r"polic(?:y|ies)|guidelines?|rules|ethic\w*|unethical|harm\w*|dangerous|illegal|appropriate|inappropriate|"
    r"safety|safe|risk\w*|privacy|professional|expert|specialist|consult|advisor|doctor|lawyer|qualified|"
    r"licensed|certified|"
    r"help|assist\w*|glad|happy|hope|feel free|let me know|reach out|questions?|patience|whenever|"
    r"delighted|pleasure|fascinating|interesting|great|certainly|absolutely|of course|"
    r"depend\w*|opinions?|positions?|controversial|subjective|neutral|decide|only you|research|look(?:ing)? "
    r"(?:it )?up|search\w*|online|source|subject|something else|something more|topic|"
    r"no idea|no information|understand|clarify|rephrase|details|avoid\w*|steer clear|advice|disclaimer|nothing|"
    r"different|differs?|var(?:y|ies)|personal|choice|taste|pros and cons|factors?|perspectives?|complicated|"
    r"unique|weigh|strengths|important|essential|crucial|remember|mindful|respect\w*|sensitiv\w*|"
    r"consider\w*|nuanced|everyone|purpose|designed|developed|created|priority)\b|n't\b|n’t\b",
    re.IGNORECASE)
OPENING = 300


def has_cue(answer: str) -> bool:
    """Whether the answer opens with a word refusals and boilerplate are made of (the refusal check judges only
    these)."""
    return CUES.search(answer[:OPENING]) is not None


@lru_cache(maxsize=1)
def weights() -> tuple[np.ndarray, np.ndarray]:
    """(coefficients, one row per kind; intercepts) of the fitted regression, read once per process."""
    fitted = json.loads(WEIGHTS.read_text())
    return np.asarray(fitted["coef"], np.float32), np.asarray(fitted["intercept"], np.float32)


def probabilities(vectors: np.ndarray) -> np.ndarray:
    """P(each of ``KINDS``) of each embedding row: one row of three per vector."""
    coef, intercept = weights()
    logits = vectors @ coef.T + intercept
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def kind_probabilities(texts: Sequence[str]) -> np.ndarray:
    """P(each of ``KINDS``) of each answer by its opening (where a refusal says what it is; a short text is
    also quicker to embed), embedded by the bundled MiniLM."""
    from pipelines.curate.embeddings import embed

    if not texts:
        return np.zeros((0, len(KINDS)), np.float32)
    return probabilities(embed([text[:OPENING] for text in texts]))


def refusal_probabilities(texts: Sequence[str]) -> np.ndarray:
    """P(refusal or boilerplate) of each answer."""
    return kind_probabilities(texts)[:, REFUSAL]
