"""Pictures a person would rather look at than read: the curation funnel and the training curves (the search's
plots are the tune stage's)."""

from __future__ import annotations

from pathlib import Path

from pipelines.artifacts import DatasetManifest


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: a job on a cluster has no display
    import matplotlib.pyplot as plt

    return plt


def curation_funnel(manifest: DatasetManifest, out: Path) -> Path:
    """Rows read, then each drop reason (largest first), then rows kept: one horizontal bar each."""
    plt = pyplot()
    reasons = sorted(manifest.dropped_by_reason.items(), key=lambda item: (-item[1], item[0]))
    labels = ["read", *(f"dropped: {reason}" for reason, _ in reasons), "kept"]
    counts = [manifest.num_read, *(count for _, count in reasons), manifest.num_kept]
    colours = ["tab:blue", *(["tab:red"] * len(reasons)), "tab:green"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.4 * len(labels)))
    bars = ax.barh(labels[::-1], counts[::-1], color=colours[::-1])
    ax.bar_label(bars, labels=[f"{c} ({c / max(1, manifest.num_read):.1%})" for c in counts[::-1]], fontsize=8,
                 padding=3)
    ax.set_xlabel("rows")
    ax.set_xlim(0, max(counts) * 1.25)
    ax.set_title(f"curation: {manifest.num_read} rows read, {manifest.num_kept} kept")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def training_curves(history: dict[str, list[tuple[int, float]]], out: Path) -> Path:
    """Train loss by step with the eval losses on it; the other eval metrics (exact match, ...) below."""
    plt = pyplot()
    losses = {k: v for k, v in history.items() if v and (k == "train_loss" or k.endswith("_loss"))}
    others = {k: v for k, v in history.items() if v and k not in losses and not k.endswith("perplexity")}
    fig, axes = plt.subplots(2 if others else 1, 1, figsize=(8, 7 if others else 4), squeeze=False, sharex=True)
    for key, points in losses.items():
        style = {"linewidth": 1} if key == "train_loss" else {"marker": "o"}
        axes[0][0].plot([s for s, _ in points], [v for _, v in points], label=key, **style)
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend(fontsize=8)
    axes[0][0].set_title("training: train loss by step, eval at each evaluation")
    for key, points in others.items():
        axes[-1][0].plot([s for s, _ in points], [v for _, v in points], marker="o", label=key)
    if others:
        axes[-1][0].legend(fontsize=8)
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
