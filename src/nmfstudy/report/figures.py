"""Figures of a whole study (many runs), for the report; per-run figures live in `plots`.

Every function takes plain `RunRecord`s and returns a `matplotlib.figure.Figure` built without
pyplot: no backend is chosen or switched, no figure is kept open.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator

from .records import RunRecord, Study, series

ACCURACIES = {"accuracy": "majority-vote accuracy", "hungarian_accuracy": "Hungarian accuracy"}
SPARSENESS = {"sparsity_H": "basis images (H): sparseness against accuracy",
              "sparsity_W": "coefficients (W): sparseness against accuracy"}
K_MARKERS = "os^DvPXh"  # one shape per k in the sparsity figure


def label_colors(labels: Iterable[str]) -> dict[str, str]:
    """Give each label one colour, the same in every figure.

    Parameters
    ----------
    labels : iterable of str
        The labels (repeats are fine).

    Returns
    -------
    dict of str to str
        label -> hex colour, from tab10 then Dark2 in the labels' sorted order (repeating after 18).
    """
    palette = colormaps["tab10"].colors + colormaps["Dark2"].colors
    return {label: to_hex(palette[i % len(palette)]) for i, label in enumerate(sorted(set(labels)))}


def save(figure: Figure, path: Path) -> Path:
    """Write a figure as PNG at 90 dpi, making its folder.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure.
    path : pathlib.Path
        Where to write it.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def _draw(ax, metric: str, best, complete, colors, title: str, log_y: bool = False) -> None:
    """Draw a line through the best run of each label and k, faint dots for its other completed runs."""
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


def _finish(fig: Figure, axes, handles: list | None = None) -> Figure:
    """Lay the figure out with one legend for all its panels, below them, where it covers no point.

    Margins are set in inches (the panels' labels, the legend's rows), not by tight_layout,
    which knows nothing of a figure legend and would let it overlap the x labels.
    """
    if handles is None:
        handles, seen = [], set()
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=False):
                if label not in seen:
                    seen.add(label)
                    handles.append(handle)
    width, height = fig.get_size_inches()
    ncol = max(1, min(len(handles), int(width // 2.3)))
    legend_in = 0.1 + 0.22 * math.ceil(len(handles) / ncol) if handles else 0.0
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, top=1 - 0.35 / height,
                        bottom=(0.55 + legend_in) / height, wspace=0.22)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.02))
    return fig


def accuracy_vs_k(best: list[RunRecord], complete: list[RunRecord], colors: dict[str, str],
                  references: list[dict]) -> Figure:
    """Draw majority-vote and Hungarian accuracy against k, one panel each.

    Majority-vote accuracy lets each cluster predict its most frequent digit (the purity of
    the clustering; any k); Hungarian accuracy matches clusters to digits one to one (Kuhn's
    assignment), so it tends to fall as k grows past the number of digits.

    Parameters
    ----------
    best : list of RunRecord
        The best run of each label and k: drawn as lines.
    complete : list of RunRecord
        All complete runs: drawn as faint dots.
    colors : dict of str to str
        label -> colour (see `label_colors`).
    references : list of dict
        Published results (keys ``method``, ``k``, ``metric``, ``value``), drawn as stars on
        the panel of their metric and labelled with their value; other metrics are skipped.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels, 10.4 x 4.6 inches, one legend below them; stars labelled "published:
        <method>" (once a method) and with their value, written beside them in the panel's margin.

    References
    ----------
    C. D. Manning, P. Raghavan and H. Schutze, Introduction to Information Retrieval,
    Cambridge University Press (2008), section 16.3 (purity).

    H. W. Kuhn, "The Hungarian method for the assignment problem", Naval Research Logistics
    Quarterly 2, 83-97 (1955).
    """
    fig = Figure(figsize=(10.4, 4.6))
    row = fig.subplots(1, 2)
    axes = dict(zip(ACCURACIES, row, strict=False))
    for metric, ax in axes.items():
        _draw(ax, metric, best, complete, colors, ACCURACIES[metric])
        ax.margins(x=0.12)  # room for a star's value beside the first and last k
    ks = [r.k for r in complete if r.k is not None] + [ref["k"] for ref in references]
    middle = (min(ks) + max(ks)) / 2 if ks else 0
    labelled = set()
    for ref in references:
        ax = axes.get(ref["metric"])
        if ax is None:
            continue
        ax.scatter([ref["k"]], [ref["value"]], marker="*", s=160, color=colors.get(ref["method"], "black"),
                   edgecolors="black", zorder=5,
                   label=None if ref["method"] in labelled else f"published: {ref['method']}")
        labelled.add(ref["method"])
        # The value beside the star, on the side away from the middle: lines run only between the
        # first and last k, so the panel's margin beyond them holds it without covering any.
        left = ref["k"] < middle
        ax.annotate(f"{ref['value']:.2f}", (ref["k"], ref["value"]), textcoords="offset points",
                    xytext=(-8 if left else 8, 0), ha="right" if left else "left", va="center", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    for ax in axes.values():
        ax.set_ylabel("accuracy")
    return _finish(fig, axes.values())


def _relative_loss(runs: list[RunRecord], base: dict[str, float]) -> list[RunRecord]:
    return [replace(r, metrics={**r.metrics, "loss": r.metric("loss") / base[r.label]})
            for r in runs if r.metric("loss") is not None and base.get(r.label)]


def elbow(best: list[RunRecord], complete: list[RunRecord], colors: dict[str, str]) -> Figure:
    """Draw J_clust and each method's loss against k: the elbow view.

    J_clust, the mean distance of a sample to its reconstruction or centroid, is comparable
    across methods. Each method's own loss (NMF's Frobenius error, K-means' inertia) differs
    by orders of magnitude from the others', so it is drawn relative to the loss of its best
    run at the smallest k: their elbows compare, their values need not.

    Parameters
    ----------
    best : list of RunRecord
        The best run of each label and k: drawn as lines.
    complete : list of RunRecord
        All complete runs: drawn as faint dots.
    colors : dict of str to str
        label -> colour (see `label_colors`).

    Returns
    -------
    matplotlib.figure.Figure
        Two panels, 10.4 x 4.4 inches: J_clust, then the relative loss; one legend below.

    References
    ----------
    R. L. Thorndike, "Who belongs in the family?", Psychometrika 18, 267-276 (1953) (the elbow).

    S. Boyd and L. Vandenberghe, Introduction to Applied Linear Algebra, Cambridge University
    Press (2018), section 4.2 (J^clust, there the mean of the squared distances).
    """
    base = {label: points[0][1] for label, points in series(best, "loss").items()}
    fig = Figure(figsize=(10.4, 4.4))
    ax_j, ax_l = fig.subplots(1, 2)
    _draw(ax_j, "j_clust", best, complete, colors, "J_clust: mean distance to reconstruction / centroid")
    _draw(ax_l, "loss", _relative_loss(best, base), _relative_loss(complete, base), colors,
          "loss / loss of the best run at the smallest k")
    return _finish(fig, [ax_j, ax_l])


def fit_time(best: list[RunRecord], complete: list[RunRecord], colors: dict[str, str]) -> Figure:
    """Draw the fit time against k, on a log scale.

    Parameters
    ----------
    best : list of RunRecord
        The best run of each label and k: drawn as lines.
    complete : list of RunRecord
        All complete runs: drawn as faint dots.
    colors : dict of str to str
        label -> colour (see `label_colors`).

    Returns
    -------
    matplotlib.figure.Figure
        One panel, 5.2 x 4.6 inches, seconds on a log scale labelled with plain numbers; the
        legend below it.
    """
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
    _draw(ax, "fit_time_s", best, complete, colors, "fit time (log scale)", log_y=True)
    ax.set_ylabel("seconds")
    return _finish(fig, [ax])


def sparsity(runs: list[RunRecord], rank_by: str, colors: dict[str, str]) -> Figure:
    """Draw accuracy against the Hoyer sparseness of the basis images and of the coefficients.

    Colour is the method (and sparsity variant), the marker's shape is k, and its fill the
    rule that turned coefficients into clusters (``method.assign``): the two rules give
    different accuracies from the same factorization, so they are told apart, not mixed.

    Parameters
    ----------
    runs : list of RunRecord
        The runs to draw (see `records.sparse_runs`).
    rank_by : str
        The metric on the y axis.
    colors : dict of str to str
        label -> colour (see `label_colors`).

    Returns
    -------
    matplotlib.figure.Figure
        Two titled panels sharing the y axis, 10.4 x 4.8 inches: against ``sparsity_H`` (the
        basis images) and ``sparsity_W`` (each component's coefficients); one legend below
        for colours, shapes (k) and fills (filled: argmax or no rule logged, hollow: k-means).

    References
    ----------
    P. O. Hoyer, "Non-negative matrix factorization with sparseness constraints",
    Journal of Machine Learning Research 5, 1457-1469 (2004).
    """
    fig = Figure(figsize=(10.4, 4.8))
    axes = fig.subplots(1, 2, sharey=True)
    ks = sorted({r.k for r in runs if r.k is not None})
    shape = {k: K_MARKERS[i % len(K_MARKERS)] for i, k in enumerate(ks)}
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((r.label, r.k, _assign_rule(r)), []).append(r)
    for ax, (metric, title) in zip(axes, SPARSENESS.items(), strict=False):
        for (label, k, rule), members in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0,
                                                                                    item[0][2] or "")):
            points = [(r.metric(metric), r.metric(rank_by)) for r in members if r.metric(metric) is not None]
            if points:
                ax.scatter(*zip(*points, strict=False), marker=shape.get(k, "o"), s=38, linewidths=1.3,
                           edgecolors=colors[label], facecolors="none" if rule == "kmeans" else colors[label])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{metric}: Hoyer sparseness (0: flat, 1: one non-zero)", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(ACCURACIES.get(rank_by, rank_by))
    handles = [Line2D([], [], marker="o", linestyle="none", color=colors[label], label=label)
               for label in sorted({r.label for r in runs})]
    handles += [Line2D([], [], marker=shape[k], linestyle="none", color="0.4", label=f"k={k}") for k in ks]
    rules = {rule for (_, _, rule) in groups}
    if "kmeans" in rules:
        handles += [Line2D([], [], marker="o", linestyle="none", color="0.4", label="filled: argmax of coefficients"),
                    Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", markeredgecolor="0.4",
                           label="hollow: k-means on coefficients")]
    return _finish(fig, axes, handles)


def _assign_rule(run: RunRecord) -> str | None:
    """How the run turned coefficients into clusters (``method.assign``), None when it logged none."""
    return run.params.get("method.assign")


def optimization_history(study: Study) -> Figure:
    """Draw a study's objective by trial, with the best value so far.

    For a study whose sweeper logged no history of its own; as Optuna's
    ``plot_optimization_history``, with pruned trials drawn apart at the value they were
    stopped at.

    Parameters
    ----------
    study : Study
        The study and its trials.

    Returns
    -------
    matplotlib.figure.Figure
        One panel, 6.4 x 3.8 inches.

    References
    ----------
    T. Akiba, S. Sano, T. Yanase, T. Ohta and M. Koyama, "Optuna: a next-generation
    hyperparameter optimization framework", KDD 2019.
    """
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
