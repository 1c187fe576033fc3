"""What a search shows a person: the table of trials and two plots (the metric against each parameter, and
each trial's eval curve), saved as PNG beside the TuneResult."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if value == value else "-"
    return "-" if value is None else str(value)


def trial_table(trials: list[dict[str, Any]], metric: str, best_id: str | None) -> str:
    """One line per trial: its parameters, eval loss, exact match, steps run, stopped early, error."""
    keys = sorted({k for t in trials for k in t["params"]})
    header = ["trial", *keys, metric, "eval_exact_match", "steps", "stopped", "error"]
    if metric == "eval_exact_match":
        header.remove("eval_exact_match")
    rows = []
    for t in trials:
        row = [t["trial_id"] + (" *" if t["trial_id"] == best_id else ""), *(t["params"].get(k) for k in keys)]
        row += [t["metrics"].get(name) for name in header[len(keys) + 1:-3]]
        row += [t["steps"], "early" if t["stopped_early"] else "", (t["error"] or "")[:60]]
        rows.append([format_value(v) for v in row])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)] if rows else map(len, header)
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def plot_search(trials: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]], metric: str,
                out_dir: Path) -> list[Path]:
    """``<out_dir>/search_<metric>_by_param.png`` and ``<out_dir>/search_curves.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for t in trials for k in t["params"]})
    scored = [t for t in trials if isinstance(t["metrics"].get(metric), int | float)]
    columns = max(1, min(3, len(keys)))
    fig, axes = plt.subplots(math.ceil(max(1, len(keys)) / columns), columns, squeeze=False,
                             figsize=(4.2 * columns, 3.4 * math.ceil(max(1, len(keys)) / columns)))
    for ax, key in zip(axes.flat, keys, strict=False):
        for early, marker, label in ((False, "o", "trained to the end"), (True, "x", "stopped early")):
            points = [(t["params"].get(key), t["metrics"][metric]) for t in scored if t["stopped_early"] == early]
            if points:
                xs = [str(x) if not isinstance(x, int | float) else x for x, _ in points]
                ax.scatter(xs, [y for _, y in points], marker=marker, label=label)
        if key.endswith("lr"):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{metric} of each trial against each searched parameter")
    fig.tight_layout()
    by_param = out_dir / f"search_{metric}_by_param.png"
    fig.savefig(by_param, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for trial_id, curve in sorted(curves.items()):
        if curve:
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=trial_id)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of each trial while it trained")
    ax.legend(fontsize=7)
    fig.tight_layout()
    curves_png = out_dir / "search_curves.png"
    fig.savefig(curves_png, dpi=100)
    plt.close(fig)
    return [by_param, curves_png]
