"""Figures of a whole study (many runs), for the report; per-run figures live in `plots`.

Every function takes plain `RunRecord`s and returns a `matplotlib.figure.Figure` built without
pyplot: no backend is chosen or switched, no figure is kept open.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable

from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from .records import RunRecord, Study, series

ACCURACIES = {"accuracy": "majority-vote accuracy", "hungarian_accuracy": "Hungarian accuracy"}


def label_colors(labels: Iterable[str]) -> dict[str, str]:
    """One color per label, the same in every figure."""
    palette = colormaps["tab10"].colors + colormaps["Dark2"].colors
    return {label: to_hex(palette[i % len(palette)]) for i, label in enumerate(sorted(set(labels)))}


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def _draw(ax, metric: str, best, complete, colors, title: str, log_y: bool = False) -> None:
    """A line through the best run of each label and k, faint dots for its other completed runs."""
    for label, points in series(complete, metric).items():
        ax.scatter(*zip(*points, strict=False), s=12, color=colors[label], alpha=0.25, linewidths=0)
    for label, points in series(best, metric).items():
        ax.plot(*zip(*points, strict=False), marker="o", color=colors[label], label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("k")
    ax.grid(True, alpha=0.3)
    if log_y:
        ax.set_yscale("log")
        # Plain numbers at 1, 2, 5, 10, ...: readable over one decade or many.
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _finish(fig: Figure, axes) -> Figure:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def accuracy_vs_k(best: list[RunRecord], complete: list[RunRecord], colors: dict[str, str],
                  references: list[dict]) -> Figure:
    """Majority-vote and Hungarian accuracy against k, with the reference results as stars on their own panel."""
    fig = Figure(figsize=(10.4, 3.8))
    row = fig.subplots(1, 2)
    axes = dict(zip(ACCURACIES, row, strict=False))
    for metric, ax in axes.items():
        _draw(ax, metric, best, complete, colors, ACCURACIES[metric])
    labelled = set()
    for ref in references:
        ax = axes.get(ref["metric"])
        if ax is None:
            continue
        key = (ref["method"], ref["metric"])
        ax.scatter([ref["k"]], [ref["value"]], marker="*", s=160, color=colors.get(ref["method"], "black"),
                   edgecolors="black", zorder=5,
                   label=None if key in labelled else f"reference: {ref['method']} ({ACCURACIES[ref['metric']]})")
        labelled.add(key)
        ax.annotate(f"{ref['value']:.2f}", (ref["k"], ref["value"]), textcoords="offset points", xytext=(6, -10),
                    fontsize=7)
    for ax in axes.values():
        ax.set_ylabel("accuracy")
    return _finish(fig, axes.values())


def _relative_loss(runs: list[RunRecord], base: dict[str, float]) -> list[RunRecord]:
    return [replace(r, metrics={**r.metrics, "loss": r.metric("loss") / base[r.label]})
            for r in runs if r.metric("loss") is not None and base.get(r.label)]


def elbow(best: list[RunRecord], complete: list[RunRecord], colors: dict[str, str]) -> Figure:
    """J_clust, comparable across methods, and each method's own loss relative to its value at the smallest k
    (NMF's Frobenius error and K-means' inertia differ by orders of magnitude; their elbows need not)."""
    base = {label: points[0][1] for label, points in series(best, "loss").items()}
    fig = Figure(figsize=(10.4, 3.8))
    ax_j, ax_l = fig.subplots(1, 2)
    _draw(ax_j, "j_clust", best, complete, colors, "J_clust: mean distance to reconstruction / centroid")
    _draw(ax_l, "loss", _relative_loss(best, base), _relative_loss(complete, base), colors,
          "loss / loss of the best run at the smallest k")
    return _finish(fig, [ax_j, ax_l])


def fit_time(best: list[RunRecord], complete: list[RunRecord], colors: dict[str, str]) -> Figure:
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.subplots()
    _draw(ax, "fit_time_s", best, complete, colors, "fit time (log scale)", log_y=True)
    ax.set_ylabel("seconds")
    return _finish(fig, [ax])


def sparsity(runs: list[RunRecord], rank_by: str, colors: dict[str, str]) -> Figure:
    """Accuracy against the Hoyer sparseness of H and of W, one color per label, each point marked with its k."""
    fig = Figure(figsize=(10.4, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, metric in zip(axes, ("sparsity_H", "sparsity_W"), strict=False):
        for label in sorted({r.label for r in runs}):
            points = [(r.metric(metric), r.metric(rank_by), r.k) for r in runs
                      if r.label == label and r.metric(metric) is not None]
            if not points:
                continue
            ax.scatter([p[0] for p in points], [p[1] for p in points], color=colors[label], label=label, s=24)
            for x, y, k in points:
                ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
        ax.set_xlabel(f"{metric} (Hoyer)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(ACCURACIES.get(rank_by, rank_by))
    return _finish(fig, axes)


def optimization_history(study: Study) -> Figure:
    """The objective of each trial by trial number, pruned trials apart, and the best value so far."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    numbered = [(t.trial_number if t.trial_number is not None else i, t) for i, t in enumerate(study.trials)]
    scored = {id(t) for t in study.scored()}
    done = [(n, t.metric(study.objective)) for n, t in numbered if id(t) in scored]
    pruned = [(n, t.metric(study.objective)) for n, t in numbered if t.pruned and t.metric(study.objective) is not None]
    if done:
        ax.scatter(*zip(*done, strict=False), s=18, color="tab:blue", label="trial")
        pick = max if study.direction == "maximize" else min
        best, running = [], None
        for _, value in done:
            running = value if running is None else pick(running, value)
            best.append(running)
        ax.step([n for n, _ in done], best, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned, strict=False), s=18, marker="x", color="grey", label="pruned (value when stopped)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{study.objective} ({study.direction})")
    ax.set_title(f"optimization history: {study.name}", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _finish(fig, [ax])
