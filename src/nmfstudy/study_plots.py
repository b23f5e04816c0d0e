"""Figures of an Optuna study, from plain per-trial data: the slices, the intermediate losses, the importances.

Drawn here rather than by ``optuna.visualization.matplotlib``, whose versions of these three
were hard to read: its slice plot puts every parameter side by side in one row (unreadable at
the width the report shows it), its intermediate values are what the trials reported (the
negated loss in a maximizing study, drawn negative without a word), and its importances say
nothing of how few trials they rest on. Each function takes plain lists (no Optuna, no pyplot)
and returns a `matplotlib.figure.Figure`; `nmfstudy.tracking.study` gathers the data.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

FEW_TRIALS = 20  # below this many trials, importances are a rough guide (the figure says so)


def _log_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """At most `most` round ticks (1, 2, 5 times a power of ten; then powers of ten) between low and high.

    Matplotlib's log axis labels its minor ticks when the data span less than a decade, and
    those labels (7.25e-3, 7.5e-3, ...) run into each other in a narrow panel.
    """
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0 ** e for e in decades for m in mantissas if low <= m * 10.0 ** e <= high]
        if len(ticks) <= most:
            break
    while len(ticks) > most:
        ticks = ticks[::2]
    return ticks if len(ticks) >= 2 else sorted({low, high})


def slices(params: dict[str, list], values: Sequence[float], numbers: Sequence[int], objective: str,
           log_scale: Sequence[str] = ()) -> Figure:
    """Draw the objective against each searched parameter, one panel per parameter, 3 a row.

    As Optuna's ``plot_slice``, laid out to be read at the report's width.

    Parameters
    ----------
    params : dict of str to list
        Parameter name -> its value in each completed trial (None where a trial lacks it); a
        parameter with any non-numeric value is drawn as categories.
    values : sequence of float
        The objective of each completed trial.
    numbers : sequence of int
        The trials' numbers: the dots' colour.
    objective : str
        The objective's name, for the y axis.
    log_scale : sequence of str, default=()
        The parameters searched on a log scale.

    Returns
    -------
    matplotlib.figure.Figure
        3.3 x 2.6 inches a panel, at most 3 panels a row, a colour bar of the trial number.
    """
    names = sorted(params)
    rows = max(1, math.ceil(len(names) / 3))
    cols = max(1, math.ceil(len(names) / rows))  # balanced: 4 parameters are 2 x 2, not 3 + 1
    width, height = 3.3 * cols + 1.1, 2.6 * rows + 0.5
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.75 / width, right=1 - 1.0 / width, bottom=0.55 / height, top=1 - 0.45 / height,
                        wspace=0.35, hspace=0.55)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    values, numbers = np.asarray(values, dtype=float), np.asarray(numbers)
    scatter = None
    for ax, name in zip(axes.flat, names, strict=False):
        raw = params[name]
        known = np.array([v is not None for v in raw])
        if any(isinstance(v, (str, bool)) for v in raw if v is not None):
            choices = sorted({str(v) for v in raw if v is not None})
            x = np.array([choices.index(str(v)) if v is not None else np.nan for v in raw], dtype=float)
            ax.set_xticks(range(len(choices)), choices, fontsize=8, rotation=30 if len(choices) > 4 else 0)
            ax.set_xlim(-0.5, len(choices) - 0.5)
        else:
            x = np.array([float(v) if v is not None else np.nan for v in raw])
            if name in log_scale and np.nanmin(x) > 0:
                ax.set_xscale("log")
                ticks = _log_ticks(np.nanmin(x), np.nanmax(x))
                ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
                ax.xaxis.set_minor_formatter(NullFormatter())
        scatter = ax.scatter(x[known], values[known], c=numbers[known], cmap="viridis", s=22,
                             edgecolors="0.3", linewidths=0.4, vmin=numbers.min(), vmax=max(numbers.max(), 1))
        ax.set_xlabel(name, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(objective, fontsize=9)
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=axes.ravel().tolist(), fraction=0.04, pad=0.03)
        bar.set_label("trial number", fontsize=8)
        bar.ax.yaxis.get_major_locator().set_params(integer=True)
        bar.ax.tick_params(labelsize=8)
    fig.suptitle(f"{objective} against each parameter: {len(values)} completed trials", fontsize=10)
    return fig


def intermediate_losses(curves: Sequence[tuple[int, Sequence[int], Sequence[float], bool]], sign: float) -> Figure:
    """Draw each trial's loss at the iterations it reported, pruned trials apart.

    Parameters
    ----------
    curves : sequence of (int, sequence of int, sequence of float, bool)
        Per trial: its number, the iterations it reported at, the values it reported, and
        whether it was pruned.
    sign : {1, -1}
        What the trials reported times the loss: -1 in a maximizing study, where a trial reports
        -loss so that larger is better for the pruner; the loss (reported value times `sign`)
        is what is drawn, and the axis says how it was reported.

    Returns
    -------
    matplotlib.figure.Figure
        One panel, 6.4 x 4 inches: loss against iteration, log scale when it spans more
        than a decade; a cross where a pruned trial was stopped.
    """
    fig = Figure(figsize=(6.4, 4.0))
    fig.subplots_adjust(left=0.9 / 6.4, right=1 - 0.2 / 6.4, bottom=0.85 / 4.0, top=1 - 0.6 / 4.0)
    ax = fig.subplots()
    drawn = []
    for _number, steps, reported, pruned in curves:
        loss = sign * np.asarray(reported, dtype=float)
        color = "0.55" if pruned else "tab:blue"
        ax.plot(steps, loss, color=color, alpha=0.8, linewidth=1.0, linestyle="--" if pruned else "-")
        if pruned and len(loss):
            ax.plot(steps[-1], loss[-1], "x", color="tab:red", markersize=7)
        drawn += list(loss)
    positive = [v for v in drawn if v > 0]
    if positive and max(positive) > 10 * min(positive):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    how = ("Optuna was told -loss (the study maximizes): drawn here as the loss" if sign < 0 else
           "as Optuna was told it (the study minimizes)")
    ax.set_ylabel("loss ||X - WH||_F", fontsize=9)
    fig.text(0.5, 1 - 0.1 / 4.0, f"intermediate values: the loss of {len(curves)} trials by iteration", ha="center",
             va="top", fontsize=10)
    fig.text(0.5, 1 - 0.33 / 4.0, how, ha="center", va="top", fontsize=8, color="0.3")
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color="tab:blue", label="completed"),
               Line2D([], [], color="0.55", linestyle="--", label="pruned"),
               Line2D([], [], color="tab:red", marker="x", linestyle="none", label="where it was pruned")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def importances(scores: dict[str, float], n_trials: int, objective: str) -> Figure:
    """Draw parameter importances as bars, saying how many trials they rest on.

    Parameters
    ----------
    scores : dict of str to float
        Parameter -> its importance (Optuna's ``get_param_importances``, normalized to sum 1).
    n_trials : int
        The completed trials the importances were computed from.
    objective : str
        The objective's name.

    Returns
    -------
    matplotlib.figure.Figure
        One horizontal bar a parameter, most important on top, 6.4 inches wide; with fewer than
        `FEW_TRIALS` trials a red line under the title says the ranking is a rough guide.
    """
    names = sorted(scores, key=scores.get)
    height = 1.6 + 0.32 * len(names)
    fig = Figure(figsize=(6.4, height))
    fig.subplots_adjust(left=2.0 / 6.4, right=1 - 0.5 / 6.4, bottom=0.5 / height, top=1 - 0.75 / height)
    ax = fig.subplots()
    bars = ax.barh(range(len(names)), [scores[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.bar_label(bars, [f"{scores[n]:.3g}" for n in names], fontsize=8, padding=2)
    ax.set_xlim(0, max([*scores.values(), 1e-12]) * 1.2)
    ax.set_xlabel(f"importance for {objective} (sums to 1)", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.text(0.5, 1 - 0.1 / height, f"parameter importances from {n_trials} completed trials", ha="center", va="top",
             fontsize=10)
    if n_trials < FEW_TRIALS:
        fig.text(0.5, 1 - 0.38 / height, f"only {n_trials} trials: a rough guide, not a ranking to rely on "
                 f"(at least {FEW_TRIALS} wanted)", ha="center", va="top", fontsize=8, color="tab:red")
    return fig
