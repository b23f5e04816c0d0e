"""Figures of a fitted method: galleries, confusion matrix, reconstructions, loss curve.

Every function builds a `matplotlib.figure.Figure` directly, without pyplot: it draws nothing
on screen, needs no display, and leaves matplotlib's backend and pyplot's list of open figures
alone (a notebook keeps its own). The caller saves or logs the figure (`fig.savefig`,
`mlflow.log_figure`); it is freed like any object once unreferenced.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from .metrics import contingency


def _grid(n: int, max_cols: int = 10) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def gallery(images: np.ndarray, image_shape: tuple[int, int], titles: list[str], suptitle: str) -> Figure:
    """Images (n x pixels) on a grid, each with its own grey scale and title."""
    rows, cols = _grid(len(images))
    fig = Figure(figsize=(1.2 * cols, 1.4 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image.reshape(image_shape), cmap="gray_r", interpolation="nearest")
        ax.set_title(title, fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def component_titles(members: np.ndarray, y: np.ndarray, k: int) -> list[str]:
    """'#j: d' with d the majority digit of the samples that belong to component j."""
    table = contingency(y, members, k)
    return [f"#{j}: {table[j].argmax()}" if table[j].sum() else f"#{j}: -" for j in range(k)]


def confusion(y_true: np.ndarray, clusters: np.ndarray, k: int, title: str) -> Figure:
    """Clusters (rows, ordered by their majority digit) against true digits (columns)."""
    table = contingency(y_true, clusters, k)
    order = np.lexsort((-table.max(axis=1), table.argmax(axis=1)))
    table = table[order]
    fig = Figure(figsize=(6, max(3.0, 0.28 * k + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(table, cmap="Blues", aspect="auto")
    ax.set_xticks(range(table.shape[1]))
    ax.set_yticks(range(k), [str(j) for j in order], fontsize=7 if k > 20 else 9)
    ax.set_xlabel("true digit")
    ax.set_ylabel("cluster")
    if k <= 20:
        for (i, j), count in np.ndenumerate(table):
            if count:
                ax.text(j, i, count, ha="center", va="center", fontsize=6,
                        color="white" if count > table.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def reconstructions(originals: np.ndarray, approximations: np.ndarray, image_shape: tuple[int, int],
                    title: str) -> Figure:
    """Originals (top row) over their reconstructions (bottom row)."""
    n = len(originals)
    fig = Figure(figsize=(1.1 * n, 2.6))
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        for row, image in enumerate((originals[j], approximations[j])):
            axes[row, j].imshow(image.reshape(image_shape), cmap="gray_r", interpolation="nearest")
            axes[row, j].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def cluster_samples(X: np.ndarray, clusters: np.ndarray, y: np.ndarray, k: int, image_shape: tuple[int, int],
                    per_cluster: int = 8, seed: int = 0, max_clusters: int = 20) -> Figure:
    """A row of random members per cluster (first `max_clusters` clusters), labelled by majority digit."""
    rng = np.random.default_rng(seed)
    shown = range(min(k, max_clusters))
    titles = component_titles(clusters, y, k)
    fig = Figure(figsize=(0.9 * per_cluster, 0.95 * len(shown) + 0.4))
    axes = fig.subplots(len(shown), per_cluster, squeeze=False)
    for row, c in enumerate(shown):
        members = np.flatnonzero(clusters == c)
        picks = rng.choice(members, size=min(per_cluster, len(members)), replace=False) if len(members) else []
        for j in range(per_cluster):
            ax = axes[row, j]
            ax.axis("off")
            if j < len(picks):
                ax.imshow(X[picks[j]].reshape(image_shape), cmap="gray_r", interpolation="nearest")
        axes[row, 0].text(-0.1, 0.5, titles[c], transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("samples per cluster (#cluster: majority digit)", fontsize=10)
    fig.tight_layout()
    return fig


def loss_curve(loss_history: np.ndarray, time_history: np.ndarray, title: str) -> Figure:
    """Loss per iteration, with elapsed seconds on a second x axis."""
    iterations = np.arange(1, len(loss_history) + 1)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.plot(iterations, loss_history, marker="." if len(iterations) < 30 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(iterations) > 1 and np.all(np.diff(time_history) > 0):
        top = ax.secondary_xaxis("top", functions=(lambda i: np.interp(i, iterations, time_history),
                                                   lambda t: np.interp(t, time_history, iterations)))
        top.set_xlabel("seconds")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
