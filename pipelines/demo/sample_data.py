"""Deterministic sample instruction data: synthetic tasks with exact answers plus planted defects.

    raylora demo-assets configs/demo.yaml        # writes <workdir>/data/ (and builds the tiny model)

The tasks (addition, successor, capitals of a made-up world, sorting, reversing) have exact
answers, so accuracy before and after fine-tuning is measurable. The same facts are written as
plain prose by ``skill_corpus`` for pretraining the tiny base model: pretraining teaches the
facts, fine-tuning teaches the chat format, and eval exact-match measures the difference.

Files written (every row carries an ``id``; the labels file scores curation):
    alpaca.jsonl   {"id", "instruction", "input", "output"}
    sharegpt.jsonl {"id", "conversations": [{"from", "value"}]}
    openai.jsonl   {"id", "messages": [{"role", "content"}]}
    eval.jsonl     held-out items in the OpenAI shape, never in the clean training rows
    narrow.jsonl   (written by ``write_narrow_task_set``, for demo-assets) one task's clean rows, OpenAI shape
    pretraining.jsonl  (written by ``write_pretraining_eval_set``, for demo-assets) {"id", "text"}: lines of
                   the tiny base's pretraining corpus as plain text, an eval set of what the base already knew
    labels.jsonl   {"id", "kind", "file", "line", "group"}: kind is "clean" or a defect kind, which is
                   the drop reason (pipelines/curate/reasons.py) curation should give the row

A line that is not JSON has no id of its own: its id is ``<file stem>:<line number>`` (1-based),
the id curation gives a row it cannot parse. Duplicate groups share ``group`` (the original's id);
each group's original is the smallest id in it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipelines.curate.reasons import (
    BAD_TURNS,
    CONTAMINATED,
    EMPTY_ANSWER,
    EXACT_DUPLICATE,
    MALFORMED,
    NEAR_DUPLICATE,
    OTHER_LANGUAGE,
    OVER_LONG,
    REFUSAL,
    REPEATED_LINES,
    REPEATED_NGRAMS,
    SHORT_ANSWER,
)
from pipelines.demo.tasks import Task, eval_items, random_task, world

CLEAN = "clean"  # the label of a row with no defect
DEFECT_KINDS = (
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    EMPTY_ANSWER,
    SHORT_ANSWER,
    REFUSAL,
    OTHER_LANGUAGE,
    OVER_LONG,
    REPEATED_NGRAMS,
    REPEATED_LINES,
    BAD_TURNS,
    CONTAMINATED,
    MALFORMED,
)
FORMATS = ("alpaca", "sharegpt", "openai")
_PREAMBLES = ["", "", "", "Quick question:", "Answer briefly.", "Please help.", "Reply with the answer only.", "Hi!"]


NARROW_TASK = "reverse"  # the one skill of the narrow set: the task kind with the most distinct items


def write_narrow_task_set(path: str | Path, seed: int = 0, n: int = 1000) -> Path:
    """``n`` clean rows of one task (``NARROW_TASK``), in the OpenAI shape, none sharing an item with the eval
    set: the narrow arm of the rank study, beside the sample data's five-task mix."""
    rng = random.Random(f"narrow-{seed}")
    capitals = world(seed)
    used = {t.key for t in eval_items(seed)}
    rows = []
    while len(rows) < n:
        task = random_task(rng, capitals)
        if task.kind != NARROW_TASK or task.key in used:
            continue
        used.add(task.key)
        rows.append(as_format("openai", f"nar-{len(rows):06d}", [("user", task.question), ("assistant", task.answer)]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return path


def _messages(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in turns]


def as_format(fmt: str, row_id: str, turns: list[tuple[str, str]]) -> dict:
    """One conversation written in the shape that users bring for ``fmt``."""
    if fmt == "alpaca":
        assert len(turns) == 2, "alpaca holds one exchange"
        return {"id": row_id, "instruction": turns[0][1], "input": "", "output": turns[1][1]}
    if fmt == "sharegpt":
        names = {"user": "human", "assistant": "gpt", "system": "system"}
        return {"id": row_id, "conversations": [{"from": names[r], "value": t} for r, t in turns]}
    return {"id": row_id, "messages": _messages(turns)}


_REFUSALS = [
    "As an AI language model, I cannot help with that request.",
    "I'm sorry, but as an AI I am not able to answer this.",
    "I cannot provide that information. As a large language model, I don't have personal opinions.",
]
_FOREIGN = [
    ("Quelle est la capitale de {c} ? Je voudrais le savoir pour mon voyage.",
     "La capitale de ce pays est {city}, une très belle ville avec beaucoup de musées."),
    ("Wie heißt die Hauptstadt von {c}? Ich möchte es für meine Reise wissen.",
     "Die Hauptstadt dieses Landes ist {city}, eine sehr schöne Stadt mit vielen Museen."),
    ("¿Cuál es la capital de {c}? Quiero saberlo para mi viaje.",
     "La capital de este país es {city}, una ciudad muy bonita con muchos museos."),
    ("Qual é a capital de {c}? Eu gostaria de saber para a minha viagem.",
     "A capital deste país é {city}, uma cidade muito bonita com muitos museus."),
]
_FILLER = ["river", "stone", "cloud", "market", "lantern", "harbor", "meadow", "copper", "silent", "window", "garden", "thunder", "pencil", "orchard", "velvet", "compass"]


@dataclass(frozen=True)
class Planted:
    row: dict
    kind: str
    group: str | None = None


class _Writer:
    """Collects rows per format file with their labels and line numbers."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {fmt: [] for fmt in FORMATS}
        self.labels: list[dict] = []

    def add(self, fmt: str, row: dict | str, kind: str, group: str | None = None) -> None:
        lines = self.lines[fmt]
        lines.append(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False, sort_keys=True))
        row_id = row["id"] if isinstance(row, dict) and "id" in row else f"{fmt}:{len(lines)}"
        self.labels.append({"id": row_id, "kind": kind, "file": f"{fmt}.jsonl", "line": len(lines), "group": group})


def generate(out_dir: str | Path, seed: int = 0, n_clean: int = 2000, n_eval: int = 200,
             defect_rate: float = 0.12) -> dict[str, Path]:
    """Write the sample data set; same seed and sizes give the same bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"data-{seed}")
    capitals = world(seed)
    evals = eval_items(seed, n_eval)
    eval_keys = {t.key for t in evals}
    train_capitals = dict(list(capitals.items())[15:])
    writer = _Writer()
    clean: list[tuple[str, str, list[tuple[str, str]]]] = []  # (fmt, id, turns)
    used: set[str] = set(eval_keys)

    def fresh_task() -> Task:
        while True:
            task = random_task(rng, train_capitals)
            if task.key not in used:
                used.add(task.key)
                return task

    def question(task: Task) -> str:
        preamble = rng.choice(_PREAMBLES)
        return f"{preamble} {task.question}".strip()

    for i in range(n_clean):
        fmt = FORMATS[i % 3]
        turns = [("user", question(t := fresh_task())), ("assistant", t.answer)]
        if fmt == "openai" and rng.random() < 0.2:
            turns.insert(0, ("system", "You are a precise assistant. Answer with the result only."))
            turns += [("user", (t2 := fresh_task()).question), ("assistant", t2.answer)]
        row_id = f"{fmt[:3]}-{i:06d}"
        clean.append((fmt, row_id, turns))
        writer.add(fmt, as_format(fmt, row_id, turns), CLEAN)

    n_defects = int(n_clean * defect_rate)
    for j in range(n_defects):
        kind = DEFECT_KINDS[j % len(DEFECT_KINDS)]
        # near duplicates come from the long multi-turn rows: on a five-word row no shingle similarity
        # tells a near duplicate from a sibling task, and only the OpenAI shape holds several turns
        fmt = "openai" if kind == NEAR_DUPLICATE else FORMATS[(j // len(DEFECT_KINDS)) % 3]
        row_id = f"{fmt[:3]}-d{j:05d}"
        for planted in _plant(kind, fmt, row_id, rng, clean, evals, capitals):
            writer.add(fmt, planted.row, planted.kind, planted.group)

    paths = {}
    for fmt, lines in writer.lines.items():
        paths[fmt] = out / f"{fmt}.jsonl"
        paths[fmt].write_bytes(("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape"))
    paths["eval"] = out / "eval.jsonl"
    paths["eval"].write_text("".join(
        json.dumps({"id": f"eval-{k:05d}", "task": t.kind,
                    "messages": _messages([("user", t.question), ("assistant", t.answer)])}, sort_keys=True) + "\n"
        for k, t in enumerate(evals)))
    paths["labels"] = out / "labels.jsonl"
    paths["labels"].write_text("".join(json.dumps(lab, sort_keys=True) + "\n" for lab in writer.labels))
    return paths


def _plant(kind: str, fmt: str, row_id: str, rng: random.Random, clean: list, evals: list[Task],
           capitals: dict[str, str]) -> Iterator[Planted]:
    """One planted defect (or several rows for one) of ``kind`` in format ``fmt``."""
    def single(prompt: str, answer: str) -> dict:
        return as_format(fmt, row_id, [("user", prompt), ("assistant", answer)])

    _, src_id, src_turns = rng.choice([c for c in clean if len(c[2]) == 2])
    prompt, answer = src_turns[0][1], src_turns[1][1]
    country = rng.choice(sorted(capitals))
    if kind == EXACT_DUPLICATE:
        yield Planted(as_format(fmt, f"{src_id}~dup{row_id}", src_turns), kind, group=src_id)
    elif kind == NEAR_DUPLICATE:
        _, long_id, long_turns = rng.choice([c for c in clean if len(c[2]) > 2])
        role, text = long_turns[-2]
        tweaked = [*long_turns[:-2], (role, text + rng.choice([" Thanks!", " Please.", " Thank you."])), long_turns[-1]]
        yield Planted(as_format(fmt, f"{long_id}~near{row_id}", tweaked), kind, group=long_id)
    elif kind == EMPTY_ANSWER:
        yield Planted(single(prompt, rng.choice(["", "   ", "\n"])), kind)
    elif kind == SHORT_ANSWER:
        ask = (f"Write a detailed essay of several paragraphs about the history, culture, economy and "
               f"geography of {country}, including its capital {capitals[country]}, its rivers, its famous "
               f"people and what a traveller should see there.")
        yield Planted(single(ask, rng.choice(["Yes.", "Ok.", "Sure.", "No."])), kind)
    elif kind == REFUSAL:
        yield Planted(single(prompt, rng.choice(_REFUSALS)), kind)
    elif kind == OTHER_LANGUAGE:
        q, a = rng.choice(_FOREIGN)
        yield Planted(single(q.format(c=country), a.format(city=capitals[country])), kind)
    elif kind == OVER_LONG:
        words = [rng.choice(_FILLER) + rng.choice(["", "s", "ed", "ing"]) for _ in range(900)]
        essay = ". ".join(" ".join(words[k:k + 12]).capitalize() for k in range(0, len(words), 12)) + "."
        yield Planted(single(f"Describe {country} in as much detail as you can.", essay), kind)
    elif kind == REPEATED_NGRAMS:  # one line of the same words over and over
        yield Planted(single(prompt, " ".join([answer] * 40)), kind)
    elif kind == REPEATED_LINES:
        yield Planted(single(prompt, "\n".join([f"The answer is {answer}."] * 15)), kind)
    elif kind == BAD_TURNS:
        if fmt == "alpaca":  # alpaca cannot hold turns: an exchange with no instruction at all
            yield Planted({"id": row_id, "instruction": "", "input": "", "output": answer}, kind)
        else:
            turns = rng.choice([[("assistant", answer), ("user", prompt)],
                                [("user", prompt), ("user", prompt), ("assistant", answer)],
                                [("user", prompt)]])
            yield Planted(as_format(fmt, row_id, turns), kind)
    elif kind == CONTAMINATED:
        leaked = rng.choice(evals)
        preamble = rng.choice(_PREAMBLES)
        yield Planted(single(f"{preamble} {leaked.question}".strip(), leaked.answer), kind)
    elif kind == MALFORMED:
        yield Planted(rng.choice(_MALFORMED[fmt])(row_id, prompt, answer), kind)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")


def _not_json(row_id: str, prompt: str, answer: str) -> str:
    return f'{{"id": "{row_id}", "instruction": "{prompt}", "output": '  # cut off mid-record


def _bad_utf8(row_id: str, prompt: str, answer: str) -> str:
    # a lone continuation byte, carried through the str as a surrogate and written back as the raw byte
    return json.dumps({"id": row_id, "instruction": prompt, "output": answer}).replace(answer, answer + "\udc9f")


_MALFORMED = {
    "alpaca": [
        _not_json,
        _bad_utf8,
        lambda i, p, a: {"id": i, "instruction": p, "output": 42},
        lambda i, p, a: {"id": i, "prompt_text": p, "answer_text": a},
    ],
    "sharegpt": [
        _not_json,
        lambda i, p, a: {"id": i, "conversations": "human: " + p},
        lambda i, p, a: {"id": i, "conversations": [{"from": "human"}, {"from": "gpt", "value": a}]},
    ],
    "openai": [
        _not_json,
        lambda i, p, a: {"id": i, "messages": [{"role": "user", "content": p}, {"role": "robot", "content": a}]},
        lambda i, p, a: {"id": i, "messages": None},
    ],
}


def read_labels(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
