"""The verdict of a claim: reproduced, contradicted or inconclusive at this scale, from per-seed differences.

The statistic (one function, ``seed_difference``): each seed gives one difference a - b; their mean d and its
standard error s = sd / sqrt(n) (sample sd, n - 1). A difference counts only when |d| > 2 s and there are at
least 3 seeds; below that it is noise and the verdict is inconclusive, never a finding.

    lower     reproduced  when it counts and d < -tolerance;  contradicted when it counts and d > tolerance
    higher    reproduced  when it counts and d >  tolerance;  contradicted when it counts and d < -tolerance
    similar   reproduced  when |d| + 2 s <= tolerance (the whole band is within it);
              contradicted when it counts and |d| > tolerance
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.study.schema import MIN_SEEDS

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
NOISE_BAND = 2.0  # standard errors a mean difference must exceed to count


@dataclass(frozen=True)
class SeedDifference:
    n: int
    mean: float | None  # None when no seed was measured on both sides
    standard_error: float | None  # None with one seed: no spread to measure
    counts: bool  # at least MIN_SEEDS seeds and |mean| > NOISE_BAND standard errors


def seed_difference(differences: list[float]) -> SeedDifference:
    """Mean of the per-seed differences, its standard error, and whether the mean is beyond the noise."""
    n = len(differences)
    if n == 0:
        raise ValueError("no seed gave a difference")
    mean = sum(differences) / n
    if n < 2:
        return SeedDifference(n, mean, None, False)
    sd = math.sqrt(sum((x - mean) ** 2 for x in differences) / (n - 1))
    se = sd / math.sqrt(n)
    return SeedDifference(n, mean, se, n >= MIN_SEEDS and abs(mean) > NOISE_BAND * se)


def judge(difference: SeedDifference, expect: str, tolerance: float) -> tuple[str, str]:
    """(verdict, why) of one claim; see the module's table."""
    d, s = difference.mean, difference.standard_error
    if difference.n < MIN_SEEDS:
        return INCONCLUSIVE, f"{difference.n} seed(s): a verdict needs at least {MIN_SEEDS}"
    band = f"mean {d:+.4g} vs noise band {NOISE_BAND:g} x SE = {NOISE_BAND * s:.4g}"
    if expect == "similar":
        if abs(d) + NOISE_BAND * s <= tolerance:
            return REPRODUCED, f"{band}: within the tolerance {tolerance:g}"
        if difference.counts and abs(d) > tolerance:
            return CONTRADICTED, f"{band}: beyond the tolerance {tolerance:g}"
        return INCONCLUSIVE, f"{band}: the band straddles the tolerance {tolerance:g}"
    if not difference.counts:
        return INCONCLUSIVE, f"{band}: within the noise"
    sign = -1 if expect == "lower" else 1
    if sign * d > tolerance:
        return REPRODUCED, f"{band}: {expect} by more than {tolerance:g}"
    if -sign * d > tolerance:
        return CONTRADICTED, f"{band}: the opposite of {expect}"
    return INCONCLUSIVE, f"{band}: smaller than the tolerance {tolerance:g}"


def overall(verdicts: list[str]) -> str:
    """A study reproduces when every claim does; one contradicted claim contradicts it."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


def claim_verdict(statement: str, metric: str, expect: str, tolerance: float,
                  per_seed: dict[int, float]) -> dict[str, Any]:
    """One claim's verdict as plain data (what verdict.json holds); with no seed measured on both sides it is
    inconclusive, so the table of what did run is still written."""
    if per_seed:
        difference = seed_difference(list(per_seed.values()))
        verdict, why = judge(difference, expect, tolerance)
    else:
        difference = SeedDifference(0, None, None, False)
        verdict, why = INCONCLUSIVE, (f"no seed has {metric} on both sides (a trial failed, or the metric is not "
                                      "reported): see the table")
    return {"statement": statement, "metric": metric, "expect": expect, "tolerance": tolerance,
            "per_seed_difference": {str(seed): value for seed, value in per_seed.items()},
            **asdict(difference), "verdict": verdict, "why": why}
