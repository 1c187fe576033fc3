"""What a study writes: the table of trials (Markdown) and the plot of each claim (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.study.schema import VARIANT_KEY

MISSING = "-"


def cell(value: Any) -> str:
    if value is None:
        return MISSING
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def table_markdown(rows: list[dict[str, Any]], grid_keys: list[str], metrics: list[str], with_data: bool) -> str:
    """One row per grid point and seed: the point, the seed, each metric (``-`` where none), the error."""
    point_keys = ([VARIANT_KEY] if with_data else []) + grid_keys
    header = [*point_keys, "seed", *metrics, "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [*(row[k] for k in point_keys), row["seed"], *(row["metrics"].get(m) for m in metrics),
                  row["error"]]
        lines.append("| " + " | ".join(cell(v).replace("|", "/") for v in values) + " |")
    return "\n".join(lines) + "\n"


def read_table(text: str) -> list[dict[str, str]]:
    """``table_markdown``'s rows back as {column: cell}: what a reader (and the tests) check the verdict by."""
    lines = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0]]
    return [dict(zip(header, (c.strip() for c in line), strict=True)) for line in lines[2:]]


def point_label(row: dict[str, Any], keys: list[str]) -> str:
    return "\n".join(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in keys)


def plot_claims(rows: list[dict[str, Any]], claims: list[dict[str, Any]], grid_keys: list[str], out: Path,
                with_data: bool) -> Path:
    """One panel per claim: its metric at every grid point, a dot per seed and a bar at the mean; the
    title carries the claim's verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ([VARIANT_KEY] if with_data else []) + grid_keys
    labels = list(dict.fromkeys(point_label(r, keys) for r in rows))
    fig, axes = plt.subplots(len(claims), 1, figsize=(max(6, 1.2 * len(labels)), 3.2 * len(claims)), squeeze=False)
    for ax, claim in zip(axes[:, 0], claims, strict=True):
        for x, label in enumerate(labels):
            values = [r["metrics"][claim["metric"]] for r in rows
                      if point_label(r, keys) == label and claim["metric"] in r["metrics"]]
            if values:
                ax.bar(x, sum(values) / len(values), color="#c8d7e8")
                ax.scatter([x] * len(values), values, color="#1f4e79", s=12, zorder=3)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylabel(claim["metric"])
        ax.set_title(f"{claim['statement']}: {claim['verdict']}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
