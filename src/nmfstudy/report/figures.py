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


def _finish(fig: Figure, axes) -> Figure:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
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
        Two panels, 10.4 x 3.8 inches.

    References
    ----------
    C. D. Manning, P. Raghavan and H. Schutze, Introduction to Information Retrieval,
    Cambridge University Press (2008), section 16.3 (purity).

    H. W. Kuhn, "The Hungarian method for the assignment problem", Naval Research Logistics
    Quarterly 2, 83-97 (1955).
    """
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
        Two panels, 10.4 x 3.8 inches: J_clust, then the relative loss.

    References
    ----------
    R. L. Thorndike, "Who belongs in the family?", Psychometrika 18, 267-276 (1953) (the elbow).

    S. Boyd and L. Vandenberghe, Introduction to Applied Linear Algebra, Cambridge University
    Press (2018), section 4.2 (J^clust, there the mean of the squared distances).
    """
    base = {label: points[0][1] for label, points in series(best, "loss").items()}
    fig = Figure(figsize=(10.4, 3.8))
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
        One panel, 5.2 x 3.8 inches, seconds on a log scale labelled with plain numbers.
    """
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.subplots()
    _draw(ax, "fit_time_s", best, complete, colors, "fit time (log scale)", log_y=True)
    ax.set_ylabel("seconds")
    return _finish(fig, [ax])


def sparsity(runs: list[RunRecord], rank_by: str, colors: dict[str, str]) -> Figure:
    """Draw accuracy against the Hoyer sparseness of the basis images and of the coefficients.

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
        Two panels sharing the y axis, 10.4 x 3.8 inches: against ``sparsity_H`` (the basis
        images) and ``sparsity_W`` (each component's coefficients); each point is marked with its k.

    References
    ----------
    P. O. Hoyer, "Non-negative matrix factorization with sparseness constraints",
    Journal of Machine Learning Research 5, 1457-1469 (2004).
    """
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
