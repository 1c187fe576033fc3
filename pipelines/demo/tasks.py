"""The sample data's world: invented countries and their capitals, and synthetic tasks with exact answers (sums,
capitals, reversals, ...), from which the tiny base's pretraining corpus, its eval set and the instruction rows
are drawn. Deterministic in the seed."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

_SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "dor", "sil", "tha", "quo", "zen", "bri", "mur", "pel", "tov", "xan"]
_LETTERS = "abcdefghijklmnoprstuvw"


def world(seed: int = 0) -> dict[str, str]:
    """The made-up countries and their capitals: facts the base model learns in pretraining."""
    rng = random.Random(f"world-{seed}")
    names: set[str] = set()
    while len(names) < 120:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.choice([2, 3]))).capitalize())
    ordered = sorted(names)
    rng.shuffle(ordered)
    return dict(zip(ordered[:60], ordered[60:], strict=True))


@dataclass(frozen=True)
class Task:
    kind: str
    key: str  # identifies the underlying item: no clean training row shares a key with an eval row
    question: str
    answer: str
    prose: str  # the same fact as plain text, for pretraining


def random_task(rng: random.Random, capitals: dict[str, str]) -> Task:
    """One task of a random kind, asking about one of ``capitals`` when it is a capital task."""
    kind = rng.choice(["add", "successor", "capital", "sort", "reverse"])
    if kind == "add":
        a, b = rng.randrange(10), rng.randrange(10)
        return Task(kind, f"add {a} {b}", f"What is {a} + {b}?", str(a + b), f"{a} + {b} = {a + b}.")
    if kind == "successor":
        n = rng.randrange(99)
        return Task(kind, f"succ {n}", f"What comes after {n}?", str(n + 1), f"After {n} comes {n + 1}.")
    if kind == "capital":
        country = rng.choice(sorted(capitals))
        city = capitals[country]
        return Task(kind, f"cap {country}", f"What is the capital of {country}?", city,
                    f"The capital of {country} is {city}.")
    if kind == "sort":
        digits = [str(rng.randrange(10)) for _ in range(3)]
        out = " ".join(sorted(digits))
        return Task(kind, f"sort {digits}", f"Sort {' '.join(digits)}.", out, f"{' '.join(digits)} sorted is {out}.")
    letters = [rng.choice(_LETTERS) for _ in range(3)]
    out = " ".join(reversed(letters))
    return Task(kind, f"rev {letters}", f"Reverse {' '.join(letters)}.", out,
                f"{' '.join(letters)} reversed is {out}.")


def skill_corpus(seed: int = 0, n_lines: int = 20000) -> list[str]:
    """Plain prose with every fact of the task world, for pretraining the tiny base model."""
    rng = random.Random(f"corpus-{seed}")
    capitals = world(seed)
    lines = [f"The capital of {c} is {city}." for c, city in capitals.items()] * 20
    lines += [random_task(rng, capitals).prose for _ in range(n_lines - len(lines))]
    rng.shuffle(lines)
    return lines


def write_pretraining_eval_set(path: str | Path, seed: int = 0, n: int = 200) -> Path:
    """The first ``n`` lines of ``skill_corpus(seed)``, the text the tiny base was pretrained on, as a
    ``data.eval_sets`` file of plain-text rows: evaluated as pretraining saw them (no chat template, every token
    counted), not as answers in a template that fine-tuning itself teaches. Its loss is what fine-tuning forgets
    of pretraining (the forgetting study's eval/pretraining/loss)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(
        json.dumps({"id": f"pretraining-{k:05d}", "text": line}, sort_keys=True) + "\n"
        for k, line in enumerate(skill_corpus(seed)[:n])))
    return path


def eval_items(seed: int = 0, n: int = 200) -> list[Task]:
    """Held-out tasks, unique by key."""
    rng = random.Random(f"eval-{seed}")
    capitals = world(seed)
    held_out_countries = dict(list(capitals.items())[:15])  # these countries are asked about only in eval
    seen: dict[str, Task] = {}
    while len(seen) < n:
        task = random_task(rng, held_out_countries if rng.random() < 0.2 else capitals)
        if task.kind != "capital" or task.key.removeprefix("cap ") in held_out_countries:
            seen.setdefault(task.key, task)
    return list(seen.values())
