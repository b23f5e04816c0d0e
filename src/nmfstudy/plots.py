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
    """(rows, columns) of a grid of n cells, at most `max_cols` wide."""
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def gallery(images: np.ndarray, image_shape: tuple[int, int], titles: list[str], suptitle: str) -> Figure:
    """Draw images on a grid, each with its own grey scale and title.

    Used for NMF's basis images beside K-means' centroids: parts against wholes, as in
    Lee & Seung's figure of NMF, vector quantization and PCA bases.

    Parameters
    ----------
    images : ndarray of shape (n_images, n_pixels)
        One flattened image per row; each is scaled to its own range.
    image_shape : tuple of int
        (height, width) that each row is reshaped to.
    titles : list of str
        One title per image; only as many images as there are titles are drawn.
    suptitle : str
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        At most 10 images per row, 1.2 x 1.4 inches each.

    References
    ----------
    D. D. Lee and H. S. Seung, "Learning the parts of objects by non-negative matrix
    factorization", Nature 401, 788-791 (1999), Fig. 1.
    """
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
    """Title each component with its index and its majority label.

    Parameters
    ----------
    members : ndarray of int, shape (n_samples,)
        The component (or cluster) each sample belongs to, in ``0 .. k - 1``.
    y : ndarray of int, shape (n_samples,), or None
        The true labels (digits), non-negative; None when there are none.
    k : int
        The number of components.

    Returns
    -------
    list of str
        ``"#j: d"`` for component j, with d its most frequent label, or ``"#j: -"`` when no
        sample belongs to it; ``"#j"`` without labels.
    """
    if y is None:
        return [f"#{j}" for j in range(k)]
    table = contingency(y, members, k)
    return [f"#{j}: {table[j].argmax()}" if table[j].sum() else f"#{j}: -" for j in range(k)]


def confusion(y_true: np.ndarray, clusters: np.ndarray, k: int, title: str) -> Figure:
    """Draw the contingency table of clusters against true digits.

    Parameters
    ----------
    y_true : ndarray of int, shape (n_samples,)
        The true labels (digits).
    clusters : ndarray of int, shape (n_samples,)
        Each sample's cluster, in ``0 .. k - 1``.
    k : int
        The number of clusters: the number of rows.
    title : str
        The axes' title.

    Returns
    -------
    matplotlib.figure.Figure
        One row per cluster, ordered by majority digit (then by the size of that majority),
        one column per digit, with a colour bar; the counts are written in the cells when
        ``k <= 20``.
    """
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
    """Draw samples over their reconstructions.

    Parameters
    ----------
    originals : ndarray of shape (n, n_pixels)
        The samples, one flattened image per row.
    approximations : ndarray of shape (n, n_pixels)
        Their reconstructions (``W @ H`` for NMF, the assigned centroid for K-means).
    image_shape : tuple of int
        (height, width) that each row is reshaped to.
    title : str
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        Two rows of n images: originals on top, reconstructions below.
    """
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
    """Draw a row of random members of each cluster, labelled by the cluster's majority digit.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_pixels)
        The samples, one flattened image per row.
    clusters : ndarray of int, shape (n_samples,)
        Each sample's cluster, in ``0 .. k - 1``.
    y : ndarray of int, shape (n_samples,)
        The true labels, for the row titles.
    k : int
        The number of clusters.
    image_shape : tuple of int
        (height, width) that each row of `X` is reshaped to.
    per_cluster : int, default=8
        Members drawn per cluster (fewer when the cluster is smaller; none when it is empty).
    seed : int, default=0
        Seed of the random choice of members.
    max_clusters : int, default=20
        Only the first `max_clusters` clusters are drawn.

    Returns
    -------
    matplotlib.figure.Figure
        One row per drawn cluster, titled ``"#cluster: majority digit"``.
    """
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
    """Draw the loss at each iteration, with the elapsed time on a second x axis.

    Parameters
    ----------
    loss_history : ndarray of shape (n_iter,)
        The loss after each iteration (positive: the y axis is logarithmic).
    time_history : ndarray of shape (n_iter,)
        The seconds elapsed at each iteration; the top axis in seconds is drawn only when
        there are at least two iterations and the times strictly increase.
    title : str
        The axes' title.

    Returns
    -------
    matplotlib.figure.Figure
        Loss against iteration, log scale.
    """
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
