"""The refusal classifier: logistic regression over the bundled MiniLM's sentence embeddings.

    python -m pipelines.curate.refusal.fit     # refits it on examples.py and rewrites weights.json

It tells answers that decline, deflect or stand AI boilerplate in for an answer from answers that do the
task (also those that mention a limitation and then answer). ``has_cue`` is the cheap gate in front of it:
an answer with none of its words (sorry, cannot, AI, policy, help, ...) is not embedded at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

WEIGHTS = Path(__file__).with_name("weights.json")
# Words a refusal, a deflection or AI boilerplate cannot do without; every training refusal holds one in its
# opening (``OPENING`` characters), where a refusal says what it is
CUES = re.compile(
    r"\b(?:not|no|never|nope|n't|n’t|cannot|can ?not|sorry|apolog\w*|regret\w*|unfortunately|afraid|unable|"
    r"decline|refus\w*|refrain|rather|prefer|pass|turn down|off-limits|outside|beyond|restrict\w*|prevents?|"
    r"lack|capabilit\w*|expertise|allowed|permitted|comfortable|my place|stop here|say no|"
    r"ai|artificial intelligence|language model|model|assistant|chatbot|bot|program\w*|machine|"
    r"trained|training|knowledge|cutoff|real-time|internet|web|browse|access|"
    r"polic(?:y|ies)|guidelines?|rules|ethic\w*|unethical|harm\w*|dangerous|illegal|appropriate|inappropriate|"
    r"safety|privacy|professional|expert|specialist|consult|advisor|doctor|lawyer|"
    r"help|assist\w*|glad|happy|hope|feel free|let me know|reach out|questions?|patience|whenever|"
    r"depend\w*|opinions?|positions?|controversial|subjective|neutral|decide|only you|research|look(?:ing)? "
    r"(?:it )?up|search\w*|online|source|subject|something else|something more|"
    r"no idea|no information|understand|clarify|rephrase|details|avoid\w*|steer clear|advice|disclaimer|nothing|"
    r"different|differs?|var(?:y|ies)|personal|choice|taste|pros and cons|factors?|perspectives?|complicated|"
    r"unique|weigh|strengths)\b|n't\b|n’t\b",
    re.IGNORECASE)
OPENING = 300


def has_cue(answer: str) -> bool:
    """Whether the answer opens with a word refusals and boilerplate are made of (the classifier judges only
    these)."""
    return CUES.search(answer[:OPENING]) is not None


@lru_cache(maxsize=1)
def weights() -> tuple[np.ndarray, float]:
    """(coefficients, intercept) of the fitted logistic regression, read once per process."""
    fitted = json.loads(WEIGHTS.read_text())
    return np.asarray(fitted["coef"], np.float32), float(fitted["intercept"])


def probabilities(vectors: np.ndarray) -> np.ndarray:
    """P(refusal or boilerplate) of each embedding row."""
    coef, intercept = weights()
    return 1.0 / (1.0 + np.exp(-(vectors @ coef + intercept)))


def refusal_probabilities(texts: Sequence[str]) -> np.ndarray:
    """P(refusal or boilerplate) of each answer by its opening (where a refusal says what it is; a short text
    is also quicker to embed), embedded by the bundled MiniLM."""
    from pipelines.curate.embeddings import embed

    if not texts:
        return np.zeros(0, np.float32)
    return probabilities(embed([text[:OPENING] for text in texts]))
