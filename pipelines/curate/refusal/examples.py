"""The refusal classifier's training examples, written for it by hand (never taken from a labelled test set).

    python -m pipelines.curate.refusal.fit      # fits the classifier on these and writes weights.json

``REFUSALS``: answers that decline the task, deflect it, or are AI boilerplate in place of an answer.
``ORDINARY``: answers that do the task, including ones that mention a limitation, apologise, or use words
like "cannot" and "AI" while still answering; the classifier must keep those.
"""

from pipelines.curate.refusal.ordinary_examples import ORDINARY
from pipelines.curate.refusal.refusal_examples import REFUSALS

__all__ = ["ORDINARY", "REFUSALS"]
