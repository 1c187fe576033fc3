"""Fit the refusal classifier on the hand-written examples and write its weights beside this file.

    python -m pipelines.curate.refusal.fit     # prints cross-validated accuracy, writes weights.json

Logistic regression (scikit-learn, which sentence-transformers brings) over the bundled MiniLM's unit
embeddings of ``examples.REFUSALS`` (label 1) and ``examples.ORDINARY`` (label 0). The weights are 384
floats and an intercept, so the file is small and the classifier needs only numpy to run.
"""

from __future__ import annotations

import json

import numpy as np

from pipelines.curate.embeddings import embed
from pipelines.curate.refusal import OPENING, WEIGHTS, has_cue
from pipelines.curate.refusal.examples import ORDINARY, REFUSALS

# inverse regularisation, chosen with the threshold (curate.refusal_classifier_threshold) on the labelled set's
# dev split: refusals caught against ordinary answers kept
C = 64.0
FOLDS = 5


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    missing = [text for text in REFUSALS if not has_cue(text)]
    if missing:
        raise SystemExit(f"{len(missing)} refusals have no cue, so the gate would never show them to the "
                         f"classifier; extend refusal.CUES: {missing[:3]}")
    texts = [*REFUSALS, *ORDINARY]
    labels = np.array([1] * len(REFUSALS) + [0] * len(ORDINARY))
    vectors = embed([text[:OPENING] for text in texts])
    model = LogisticRegression(C=C, max_iter=2000, class_weight="balanced")
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, vectors, labels, cv=folds)
    refusal_recall = float((predicted[labels == 1] == 1).mean())
    ordinary_kept = float((predicted[labels == 0] == 0).mean())
    print(f"{FOLDS}-fold cross-validation on {len(REFUSALS)} refusals / {len(ORDINARY)} ordinary answers: "
          f"refusal recall {refusal_recall:.3f}, ordinary kept {ordinary_kept:.3f}")
    model.fit(vectors, labels)
    WEIGHTS.write_text(json.dumps({"coef": [round(float(w), 6) for w in model.coef_[0]],
                                   "intercept": round(float(model.intercept_[0]), 6),
                                   "C": C, "refusals": len(REFUSALS), "ordinary": len(ORDINARY)}) + "\n")
    print(f"wrote {WEIGHTS}")


if __name__ == "__main__":
    main()
