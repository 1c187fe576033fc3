"""The answer-kind classifier's training examples, written for it by hand (never taken from a labelled test set).

    python -m pipelines.curate.refusal.fit      # fits the classifier on these and writes weights.json

``ANSWERS``: answers that do the task, long and short, including ones that mention a limitation, apologise,
hedge or use words like "cannot" and "AI" while still answering; the classifier must keep those.
``REFUSALS``: answers that decline the task, deflect it, or are AI boilerplate in place of an answer.
``NON_ANSWERS``: text in an answer's place that neither answers nor declines ("ok", "see above", "?").
"""

from pipelines.curate.refusal.answer_examples import HEDGED_ANSWERS, SHORT_ANSWERS
from pipelines.curate.refusal.boilerplate_examples import BOILERPLATE, MORE_REFUSALS
from pipelines.curate.refusal.non_answer_examples import NON_ANSWERS
from pipelines.curate.refusal.ordinary_examples import ORDINARY
from pipelines.curate.refusal.refusal_examples import REFUSALS as PLAIN_REFUSALS

ANSWERS = [*ORDINARY, *SHORT_ANSWERS, *HEDGED_ANSWERS]
REFUSALS = [*PLAIN_REFUSALS, *MORE_REFUSALS, *BOILERPLATE]

__all__ = ["ANSWERS", "NON_ANSWERS", "REFUSALS"]
