"""Figures of a fitted method: galleries, confusion matrix, reconstructions, loss curve.

Every function builds a `matplotlib.figure.Figure` directly, without pyplot: it draws nothing
on screen, needs no display, and leaves matplotlib's backend and pyplot's list of open figures
alone (a notebook keeps its own). The caller saves or logs the figure (`fig.savefig`,
`mlflow.log_figure`); it is freed like any object once unreferenced.

Many small images (basis images, centroids, samples) are drawn as one mosaic: the images
tiled into one array (`mosaic`) and drawn by one ``imshow``, their titles as text at the
tiles' positions or as tick labels. With one axes per small image (160 for the per-cluster
samples alone), a run's five figures took 1.6-2.5 s at k = 10 and 3-4.5 s at k = 50 on the
2-core machine; as mosaics, about 0.4 s at either k.

Images may have any shape: every function takes the images' real ``(height, width)``.
Labels are optional: with ``y=None`` (unlabelled data) titles carry no majority label, and
`confusion`, which needs labels, is simply not called.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .metrics import contingency

TILE_IN = 0.9  # inches of a small image's longer side: 81 px at the 90 dpi figures are saved at
TITLE_PT = 8  # points of a tile's title: 10 px at 90 dpi, legible at the size saved
NOTE_PT = 7.5  # points of the note under a mosaic
SAMPLE_IN = 0.65  # inches of a sample's longer side in the per-cluster grid: 8 x 20 of them
# White behind and between the tiles (NaN in the mosaic); 0 is white and 1 black within a tile.
GREYS = colormaps["gray_r"].with_extremes(bad="white")
FRAME = "0.8"  # light grey frame of each tile: shows where a blank (dead) image is


def _grid(n: int, max_cols: int = 10) -> tuple[int, int]:
    """(rows, columns) of a grid of n cells, at most `max_cols` wide."""
    cols = max(1, min(n, max_cols))
    return max(1, math.ceil(n / cols)), cols


def _scaled(image: np.ndarray) -> np.ndarray:
    """An image scaled to [0, 1] by its own range (as imshow scales one image); a constant one -> 0."""
    low, span = image.min(), np.ptp(image)
    return (image - low) / span if span > 0 else np.zeros_like(image)


def mosaic(images: np.ndarray, image_shape: tuple[int, int], cols: int, *, gap: int = 1,
           band: int = 0) -> np.ndarray:
    """Tile images, one per cell of a grid, into one array, to be drawn by one ``imshow``.

    Parameters
    ----------
    images : ndarray of shape (n_images, height * width)
        One flattened image per row, in the grid's reading order (left to right, top down);
        a row of NaN leaves its cell empty.
    image_shape : tuple of int
        (height, width) of an image.
    cols : int
        Cells per row of the grid; the rows are ``ceil(n_images / cols)``.
    gap : int, default=1
        Pixels between two cells and around the grid.
    band : int, default=0
        Pixels of space above each row of cells, for the cells' titles.

    Returns
    -------
    ndarray of shape (rows * (band + gap + height) + gap, cols * (width + gap) + gap), float64
        NaN outside the images (drawn as background); image i, scaled to [0, 1] by its own
        range (an all-zero image stays 0), at rows ``top = r * (band + gap + height) + band + gap``
        and columns ``left = c * (width + gap) + gap`` with ``r, c = divmod(i, cols)``.
    """
    h, w = image_shape
    images = np.asarray(images, dtype=np.float64).reshape(len(images), h * w)
    rows = max(1, math.ceil(len(images) / cols))
    out = np.full((rows * (band + gap + h) + gap, cols * (w + gap) + gap), np.nan)
    for i, image in enumerate(images):  # one slice assignment per image: k at most a few hundred
        if np.isnan(image).all():
            continue  # no image in this cell
        top, left = _tile_origin(i, cols, image_shape, gap, band)
        out[top:top + h, left:left + w] = _scaled(image).reshape(h, w)
    return out


def _tile_origin(i: int, cols: int, image_shape: tuple[int, int], gap: int, band: int) -> tuple[int, int]:
    r, c = divmod(i, cols)
    return r * (band + gap + image_shape[0]) + band + gap, c * (image_shape[1] + gap) + gap


def _gap(image_shape: tuple[int, int]) -> int:
    # About 5% of an image between two images, whatever their size: 1 px for 8x8, 2 px for 28x28.
    return max(1, round(0.06 * max(image_shape)))


def _mosaic_figure(grid: np.ndarray, image_shape: tuple[int, int], title: str, note: str = "",
                   left_in: float = 0.1, tile_in: float = TILE_IN) -> tuple[Figure, Axes]:
    """A figure whose one axes shows `grid` at `tile_in` inches per image side, titled, with a note below.

    The axes' box is the mosaic's own shape, so the pixels are square without any layout pass
    (tight_layout measures every text: slow, and unneeded when the margins are known). A mosaic
    narrower than 4 inches is centred in a 4-inch figure, so that its title fits.
    """
    per_px = tile_in / max(image_shape)  # inches per image pixel
    width, height = grid.shape[1] * per_px, grid.shape[0] * per_px
    fig_w = max(left_in + width + 0.1, 4.0)
    left_in += (fig_w - (left_in + width + 0.1)) / 2
    top_in, bottom_in = 0.4, max(0.1, _note_height(note, fig_w))
    fig_h = top_in + height + bottom_in
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left_in / fig_w, bottom_in / fig_h, width / fig_w, height / fig_h))
    ax.imshow(grid, cmap=GREYS, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    ax.set_xlim(-0.5, grid.shape[1] - 0.5)
    ax.set_ylim(grid.shape[0] - 0.5, -0.5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.text(0.5, 1 - 0.12 / fig_h, title, ha="center", va="top", fontsize=10)
    if note:
        fig.text(0.08 / fig_w, (bottom_in - 0.06) / fig_h, textwrap.fill(note, _note_chars(fig_w)),
                 fontsize=NOTE_PT, color="0.25", va="top", ha="left")
    return fig, ax


def _frames(ax: Axes, tiles: list[int], cols: int, image_shape: tuple[int, int], gap: int, band: int) -> None:
    """A light frame around each of the given tiles, all in one LineCollection."""
    if not len(tiles):
        return
    h, w = image_shape
    top, left = (np.array([_tile_origin(i, cols, image_shape, gap, band) for i in tiles], dtype=float) - 0.5).T
    box = np.stack([np.stack([left, top], 1), np.stack([left + w, top], 1), np.stack([left + w, top + h], 1),
                    np.stack([left, top + h], 1), np.stack([left, top], 1)], axis=1)
    ax.add_collection(LineCollection(box, colors=FRAME, linewidths=0.6), autolim=False)


def _note_chars(width_in: float) -> int:
    """Characters of a note's line in a figure `width_in` wide (an average glyph is about 0.55 em)."""
    return max(30, int((width_in - 0.2) * 72 / (0.55 * NOTE_PT)))


def _note_height(text: str, width_in: float) -> float:
    """Inches the wrapped `text` takes at the bottom of a figure `width_in` wide (0 for none)."""
    if not text:
        return 0.0
    return 0.12 + len(textwrap.wrap(text, _note_chars(width_in))) * NOTE_PT * 1.3 / 72


def gallery(images: np.ndarray, image_shape: tuple[int, int], titles: list[str], suptitle: str,
            note: str = "") -> Figure:
    """Draw images on a grid, each with its own grey scale and title, as one mosaic.

    Used for NMF's basis images beside K-means' centroids: parts against wholes, as in
    Lee & Seung's figure of NMF, vector quantization and PCA bases.

    Parameters
    ----------
    images : ndarray of shape (n_images, height * width)
        One flattened image per row; each is scaled to its own range (black: its maximum);
        an all-zero image is drawn blank in its frame.
    image_shape : tuple of int
        (height, width) of an image, any size.
    titles : list of str
        One title per image; only as many images as there are titles are drawn. A title
        ending in ``": dead"`` is drawn in red.
    suptitle : str
        The figure's title.
    note : str, default=""
        Text under the grid, wrapped to its width: what the titles mean (see `titles_note`).

    Returns
    -------
    matplotlib.figure.Figure
        5 images per row up to 20 images, else 10; an image's longer side is 0.9 inches.

    References
    ----------
    D. D. Lee and H. S. Seung, "Learning the parts of objects by non-negative matrix
    factorization", Nature 401, 788-791 (1999), Fig. 1.
    """
    images = np.asarray(images)[: len(titles)]
    # 5 columns up to 20 images: two galleries fit side by side (the README, the report) at full size.
    _, cols = _grid(len(images), 5 if len(images) <= 20 else 10)
    gap = _gap(image_shape)
    band = math.ceil(0.2 * max(image_shape) / TILE_IN)  # 0.2 inches above each row for the titles
    grid = mosaic(images, image_shape, cols, gap=gap, band=band)
    fig, ax = _mosaic_figure(grid, image_shape, suptitle, note)
    _frames(ax, list(range(len(images))), cols, image_shape, gap, band)
    for i, title in enumerate(titles[: len(images)]):
        top, left = _tile_origin(i, cols, image_shape, gap, band)
        ax.text(left + (image_shape[1] - 1) / 2, top - 0.5 - gap, title, ha="center", va="bottom",
                fontsize=TITLE_PT, color="tab:red" if title.endswith(": dead") else "black")
    return fig


def component_titles(members: np.ndarray, y: np.ndarray | None, k: int,
                     images: np.ndarray | None = None) -> list[str]:
    """Title each component with its index and, given labels, its majority label.

    Parameters
    ----------
    members : ndarray of int, shape (n_samples,)
        The component (or cluster) each sample belongs to, in ``0 .. k - 1``.
    y : ndarray of int, shape (n_samples,), or None
        The true labels (digits), non-negative; None for unlabelled data.
    k : int
        The number of components.
    images : ndarray of shape (k, n_pixels), optional
        The components' images: an all-zero one is titled dead.

    Returns
    -------
    list of str
        ``"#j: d"`` for component j with d its most frequent label (``"#j"`` when `y` is None),
        ``"#j: -"`` when no sample belongs to it, ``"#j: dead"`` when its image is all zero.
    """
    sizes = np.bincount(np.asarray(members), minlength=k)[:k]
    majority = contingency(y, members, k).argmax(axis=1) if y is not None else None
    dead = (np.zeros(k, bool) if images is None
            else ~np.asarray(images).reshape(len(images), -1)[:k].any(axis=1))
    titles = []
    for j in range(k):
        if dead[j]:
            titles.append(f"#{j}: dead")
        elif not sizes[j]:
            titles.append(f"#{j}: -")
        else:
            titles.append(f"#{j}: {majority[j]}" if majority is not None else f"#{j}")
    return titles


def titles_note(titles: list[str], labelled: bool, what: str = "image") -> str:
    """Say what the titles of `component_titles` mean, only for the kinds that occur.

    Parameters
    ----------
    titles : list of str
        Titles from `component_titles`.
    labelled : bool
        Whether the titles carry majority labels.
    what : str, default="image"
        What is numbered: "image" (a gallery) or "cluster" (rows of samples).

    Returns
    -------
    str
        One or more sentences for a figure's note.
    """
    parts = ([f"#j: d = {what} j and the most frequent true label (digit) among the training samples "
              "that belong to it"] if labelled else
             [f"#j = {what} j (no labels, so no majority label)"])
    if any(t.endswith(": -") for t in titles):
        parts.append("'-': no training sample belongs to it")
    if any(t.endswith(": dead") for t in titles):
        parts.append("dead: an all-zero component (drawn blank), which explains no sample")
    return "; ".join(parts) + "."


def confusion(y_true: np.ndarray, clusters: np.ndarray, k: int, title: str) -> Figure:
    """Draw the contingency table of clusters against true labels.

    Needs labels: for unlabelled data (``y=None``) it is not drawn.

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
    height = max(3.0, 0.28 * k + 1.5)
    fig = Figure(figsize=(6, height))
    # Margins in inches, not tight_layout: it measures every text of the figure, a third of its cost.
    fig.subplots_adjust(left=0.7 / 6, right=1 - 0.6 / 6, bottom=0.6 / height, top=1 - 0.4 / height)
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
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax.set_title(title, fontsize=10)
    return fig


def _row_labels(ax: Axes, labels: list[str], image_shape: tuple[int, int], gap: int) -> None:
    """Label the rows of a mosaic without title bands at its left, as tick labels."""
    centres = [r * (gap + image_shape[0]) + gap + (image_shape[0] - 1) / 2 for r in range(len(labels))]
    ax.set_yticks(centres, labels, fontsize=TITLE_PT)
    ax.tick_params(length=0, pad=3)


def reconstructions(originals: np.ndarray, approximations: np.ndarray, image_shape: tuple[int, int],
                    title: str) -> Figure:
    """Draw samples over their reconstructions, as one mosaic.

    Parameters
    ----------
    originals : ndarray of shape (n, height * width)
        The samples, one flattened image per row.
    approximations : ndarray of shape (n, height * width)
        Their reconstructions (``W @ H`` for NMF, the assigned centroid for K-means).
    image_shape : tuple of int
        (height, width) of an image, any size.
    title : str
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        Two rows of n images, each scaled to its own range: originals on top, reconstructions
        below, labelled at the left.
    """
    n = len(originals)
    gap = _gap(image_shape)
    grid = mosaic(np.concatenate([originals, approximations]), image_shape, n, gap=gap)
    fig, ax = _mosaic_figure(grid, image_shape, title, left_in=1.0)
    _frames(ax, list(range(2 * n)), n, image_shape, gap, 0)
    _row_labels(ax, ["original", "reconstruction"], image_shape, gap)
    return fig


def cluster_samples(X: np.ndarray, clusters: np.ndarray, y: np.ndarray | None, k: int,
                    image_shape: tuple[int, int], per_cluster: int = 8, seed: int = 0, max_clusters: int = 20,
                    title: str = "samples per cluster") -> Figure:
    """Draw a row of random members of each cluster, labelled by the cluster's majority label.

    Parameters
    ----------
    X : ndarray of shape (n_samples, height * width)
        The samples, one flattened image per row.
    clusters : ndarray of int, shape (n_samples,)
        Each sample's cluster, in ``0 .. k - 1``.
    y : ndarray of int, shape (n_samples,), or None
        The true labels, for the row labels; None for unlabelled data (rows labelled ``#j``).
    k : int
        The number of clusters.
    image_shape : tuple of int
        (height, width) of an image, any size.
    per_cluster : int, default=8
        Members drawn per cluster (fewer when the cluster is smaller; none when it is empty).
    seed : int, default=0
        Seed of the random choice of members.
    max_clusters : int, default=20
        Only the first `max_clusters` clusters are drawn (the title says so).
    title : str, default="samples per cluster"
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        One row per drawn cluster, labelled at its left as `component_titles` does, with a note
        on what the labels mean.
    """
    rng = np.random.default_rng(seed)
    shown = min(k, max_clusters)
    labels = component_titles(clusters, y, k)[:shown]
    picks = np.full((shown * per_cluster, math.prod(image_shape)), np.nan)  # NaN: an empty cell
    drawn = []
    for c in range(shown):
        members = np.flatnonzero(clusters == c)
        chosen = rng.choice(members, size=min(per_cluster, len(members)), replace=False) if len(members) else []
        picks[c * per_cluster: c * per_cluster + len(chosen)] = X[chosen]
        drawn += range(c * per_cluster, c * per_cluster + len(chosen))
    gap = _gap(image_shape)
    grid = mosaic(picks, image_shape, per_cluster, gap=gap)
    more = f" (the first {shown} of {k} clusters)" if shown < k else ""
    fig, ax = _mosaic_figure(grid, image_shape, title + more, titles_note(labels, y is not None, "cluster"),
                             left_in=0.7, tile_in=SAMPLE_IN)
    _frames(ax, drawn, per_cluster, image_shape, gap, 0)
    _row_labels(ax, labels, image_shape, gap)
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
    fig.subplots_adjust(left=0.8 / 6, right=1 - 0.25 / 6, bottom=0.55 / 3.6, top=1 - 0.75 / 3.6)  # no tight_layout
    ax = fig.subplots()
    ax.plot(iterations, loss_history, marker="." if len(iterations) < 30 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    # Plain numbers (350, 3.6e+02 would be matplotlib's minor labels): a loss often spans less than a decade.
    plain = FuncFormatter(lambda value, _: f"{value:.4g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="both", labelsize=8)
    ax.grid(True, alpha=0.3)
    if len(iterations) > 1 and np.all(np.diff(time_history) > 0):
        # The seconds at the iterations ticked below, not a time scale of its own: iterations take
        # uneven times, and a time scale's evenly spaced labels then crowd into each other.
        ax.set_xlim(iterations[0], iterations[-1])
        ticks = [i for i in ax.get_xticks() if iterations[0] <= i <= iterations[-1]]
        top = ax.secondary_xaxis("top")
        seconds = np.interp(ticks, iterations, time_history)
        top.set_xticks(ticks, [f"{t:.2f}" if t < 10 else f"{t:.0f}" for t in seconds])
        top.set_xlabel("seconds")
    ax.set_title(title, fontsize=10)
    return fig
