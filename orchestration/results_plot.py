"""The error-against-labels figure of a report: one panel per dataset, each method against its baseline."""

from __future__ import annotations

from pathlib import Path

from .results import PAPER_ERRORS, uses_decoder


def _series_name(row: dict) -> str:
    if row["baseline"]:
        return "supervised-only baseline"
    method = "SWWAE" if set(row["terms"]) <= {"rec", "mid"} else " + ".join(row["terms"])
    extras = [
        x
        for x in (
            uses_decoder(row) and row["pooling"] != "hard" and f"{row['pooling']} pooling",
            uses_decoder(row) and row["unpool"] != "where" and f"{row['unpool']} unpooling",
            uses_decoder(row) and row["decoder_top"] != "what" and f"{row['decoder_top']} top",
        )
        if x
    ]
    return method + (f" ({', '.join(extras)})" if extras else "")


def plot_error_vs_labels(rows: list[dict], path: Path) -> None:
    """Test error against label count, one panel per dataset: SWWAE vs its baseline, paper points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plotted = [r for r in rows if r["labels"] is not None and r["mode"] != "unsupervised"]
    datasets = sorted({r["dataset"] for r in plotted}) or ["(no runs with a labeled subset)"]
    fig = Figure(figsize=(5.5 * len(datasets), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        series: dict[str, list[dict]] = {}
        for row in plotted:
            if row["dataset"] == dataset:
                series.setdefault(_series_name(row), []).append(row)
        for name, members in sorted(series.items()):
            members.sort(key=lambda r: r["labels"])
            ax.errorbar(
                [r["labels"] for r in members],
                [r["error_mean"] for r in members],
                yerr=[r["error_std"] or 0 for r in members],
                marker="o",
                capsize=4,
                linestyle="--" if name.startswith("supervised") else "-",
                label=name,
            )
        paper = sorted((labels, err) for (ds, labels, _), (err, _) in PAPER_ERRORS.items() if ds == dataset and labels)
        if paper:
            ax.scatter(*zip(*paper), marker="*", s=160, color="black", zorder=3, label="paper (SWWAE)")
        ax.set_xscale("log")
        ax.set_xlabel("labeled examples")
        ax.set_ylabel("test error (%)")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
        if series or paper:
            ax.legend()
    fig.savefig(path, dpi=120)
