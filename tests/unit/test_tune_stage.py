"""A search Tune stopped before its end is not reported as finished (``check_finished``), so a rerun resumes it
instead of reading a result that was never complete."""

from __future__ import annotations

import pytest

from pipelines.errors import StageError
from pipelines.tune.stage import check_finished


class Grid(list):
    """The three things ``check_finished`` reads of Ray Tune's ResultGrid: its trials, and how many ended."""

    def __init__(self, trials: int, terminated: int, errors: int) -> None:
        super().__init__(range(trials))
        self.num_terminated, self.num_errors = terminated, errors


@pytest.mark.parametrize("grid, expected, finished", [
    (Grid(4, 4, 0), 4, True),   # every trial trained to the end or was stopped by ASHA
    (Grid(4, 3, 1), 4, True),   # a failed trial ends the trial, not the search
    (Grid(4, 2, 0), 4, False),  # two trials were still running when the stop signal came
    (Grid(2, 2, 0), 4, False),  # two trials never started
])
def test_a_search_is_finished_only_when_every_trial_ended(grid, expected, finished):
    if finished:
        check_finished(grid, expected)
    else:
        with pytest.raises(StageError, match=r"stopped before it finished .* rerun the same command"):
            check_finished(grid, expected)
