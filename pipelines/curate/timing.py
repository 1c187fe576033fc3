"""Each filter's seconds, summed over every Ray task of the read pass, for the curation report.

    raylora curate configs/demo.yaml     # the report ends with the seconds and ms per row of each filter

A ``FilterClock`` actor (no CPU of its own) collects the seconds ``filters.first_failures`` measured in
each task; the driver reads the totals once the pass is written. A plain dict in a worker would not reach
the driver, and a column of the rows would cost a value per row.
"""

from __future__ import annotations

from typing import Any


class FilterClock:
    """Seconds per filter name, added to by the read tasks (made a Ray actor by ``start_clock``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, seconds: dict[str, float]) -> None:
        for name, spent in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + spent

    def totals(self) -> dict[str, float]:
        return dict(self.seconds)


def start_clock() -> Any:
    import ray

    return ray.remote(num_cpus=0)(FilterClock).remote()


def format_filter_seconds(seconds: dict[str, float], rows: int) -> str:
    """One line per filter in chain order: seconds summed over the tasks and ms per row read."""
    lines = [f"  {'filter':<20} {'seconds':>8}  ms/row   (summed over the read tasks, {rows} rows read)"]
    lines += [f"  {name:<20} {spent:>8.2f}  {1000 * spent / max(rows, 1):>6.3f}" for name, spent in seconds.items()]
    return "\n".join(lines)
