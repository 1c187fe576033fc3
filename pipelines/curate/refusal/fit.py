"""Fit the answer-kind classifier on the hand-written examples and write its weights beside this file.

    python -m pipelines.curate.refusal.fit     # prints cross-validated recall per kind, writes weights.json

Multinomial logistic regression (scikit-learn, which sentence-transformers brings) over the bundled MiniLM's
unit embeddings of ``examples.ANSWERS``, ``examples.REFUSALS`` and ``examples.NON_ANSWERS`` (the order of
``KINDS``). The weights are 3 x 384 floats and three intercepts, so the file is small and the classifier needs
only numpy to run.
"""

from __future__ import annotations

import json

import numpy as np

from pipelines.curate.embeddings import embed
from pipelines.curate.refusal import KINDS, OPENING, WEIGHTS, has_cue
from pipelines.curate.refusal.examples import ANSWERS, NON_ANSWERS, REFUSALS

# inverse regularisation: strong enough a fit to separate the kinds on cross-validation, weak enough that
# the weights stay small (chosen on cross-validation over the examples, not on any labelled set)
C = 16.0
FOLDS = 5


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    missing = [text for text in REFUSALS if not has_cue(text)]
    if missing:
        raise SystemExit(f"{len(missing)} refusals have no cue, so the gate would never show them to the "
                         f"classifier; extend refusal.CUES: {missing[:3]}")
    by_kind = (ANSWERS, REFUSALS, NON_ANSWERS)
    texts = [text for examples in by_kind for text in examples]
    labels = np.array([kind for kind, examples in enumerate(by_kind) for _ in examples])
    vectors = embed([text[:OPENING] for text in texts])
    model = LogisticRegression(C=C, max_iter=5000, class_weight="balanced")
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, vectors, labels, cv=folds)
    recalls = ", ".join(f"{name} {float((predicted[labels == kind] == kind).mean()):.3f} of {len(examples)}"
                        for kind, (name, examples) in enumerate(zip(KINDS, by_kind, strict=True)))
    print(f"{FOLDS}-fold cross-validated recall per kind: {recalls}")
    model.fit(vectors, labels)
    WEIGHTS.write_text(json.dumps({"kinds": list(KINDS), "coef": [[round(float(w), 6) for w in row]
                                                                   for row in model.coef_],
                                   "intercept": [round(float(b), 6) for b in model.intercept_],
                                   "C": C, "examples": {name: len(examples) for name, examples
                                                        in zip(KINDS, by_kind, strict=True)}}) + "\n")
    print(f"wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
