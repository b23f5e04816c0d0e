"""nmfstudy.plots: mosaics of images of any shape, titles, dead components, unlabelled data."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from nmfstudy import plots

SHAPE = (32, 48)  # not MNIST's 28 x 28, and not square


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]


def the_image(fig) -> np.ndarray:
    """The one image a mosaic figure draws."""
    (ax,) = fig.axes
    (image,) = ax.images
    return np.asarray(image.get_array(), dtype=float)


def test_mosaic_places_each_image_scaled_at_its_tile():
    rng = np.random.default_rng(0)
    images = rng.random((7, SHAPE[0] * SHAPE[1])) * 5
    images[4] = 0.0  # an all-zero image stays 0 (blank), no division by zero
    grid = plots.mosaic(images, SHAPE, cols=3, gap=2, band=5)
    h, w = SHAPE
    assert grid.shape == (3 * (5 + 2 + h) + 2, 3 * (w + 2) + 2)
    for i, image in enumerate(images):
        r, c = divmod(i, 3)
        top, left = r * (5 + 2 + h) + 5 + 2, c * (w + 2) + 2
        tile = grid[top:top + h, left:left + w]
        expected = image.reshape(SHAPE)
        if image.max() > 0:
            expected = (expected - expected.min()) / (expected.max() - expected.min())
        np.testing.assert_allclose(tile, expected)
    # everything else is background (NaN): the 7 tiles are all the mosaic holds
    assert np.isnan(grid).sum() == grid.size - 7 * h * w


def test_gallery_is_one_image_with_titles_and_the_dead_marked():
    rng = np.random.default_rng(1)
    components = rng.random((12, SHAPE[0] * SHAPE[1]))
    components[3] = 0.0
    members = np.repeat(np.arange(12), 10)
    y = np.repeat(np.arange(12) % 4, 10)
    y[members == 5] = 2
    members[members == 5] = 6  # component 5 holds no sample, 6 twice as many 2s
    titles = plots.component_titles(members, y, 12, components)
    assert titles[:7] == ["#0: 0", "#1: 1", "#2: 2", "#3: dead", "#4: 0", "#5: -", "#6: 2"]
    fig = plots.gallery(components, SHAPE, titles, "method=nmf, k=12: NMF basis images",
                        plots.titles_note(titles, labelled=True))
    grid = the_image(fig)
    gap, band = plots._gap(SHAPE), int(np.ceil(0.2 * 48 / plots.TILE_IN))
    assert grid.shape == (3 * (band + gap + 32) + gap, 5 * (48 + gap) + gap)  # 12 images, 5 a row
    written = texts(fig)
    assert "method=nmf, k=12: NMF basis images" in written and set(titles) <= set(written)
    (note,) = [" ".join(t.split()) for t in written if t.startswith("#j: d")]  # unwrapped
    assert "'-': no training sample" in note and "dead: an all-zero component" in note
    (dead,) = [t for t in fig.axes[0].texts if t.get_text() == "#3: dead"]
    assert dead.get_color() == "tab:red"


def test_gallery_draws_each_image_where_its_title_says():
    """Rendered: image i has one hot pixel; the screen pixel there is black, its neighbour tile's is white."""
    h, w = SHAPE
    images = np.zeros((6, h * w))
    spots = [(3 + 4 * i, 5 + 7 * i) for i in range(6)]  # a different place in each image
    for i, (r, c) in enumerate(spots):
        images[i, r * w + c] = 1.0
    fig = plots.gallery(images, SHAPE, [f"#{i}" for i in range(6)], "spots")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].mean(axis=2)
    ax = fig.axes[0]
    gap, band = plots._gap(SHAPE), int(np.ceil(0.2 * 48 / plots.TILE_IN))
    for i, (r, c) in enumerate(spots):
        top, left = plots._tile_origin(i, 5, SHAPE, gap, band)
        x, y = ax.transData.transform((left + c, top + r))
        assert pixels[int(pixels.shape[0] - y), int(x)] < 60, i  # black: the image's maximum
        other = spots[(i + 1) % 6]
        x, y = ax.transData.transform((left + other[1], top + other[0]))
        assert pixels[int(pixels.shape[0] - y), int(x)] > 200, i  # white: this image is 0 there
        title = next(t for t in ax.texts if t.get_text() == f"#{i}")
        tx, ty = title.get_position()
        assert left <= tx <= left + w and ty < top  # centred above its own tile


def test_unlabelled_titles_and_figures_work_without_y():
    rng = np.random.default_rng(2)
    X = rng.random((90, SHAPE[0] * SHAPE[1]))
    clusters = np.arange(90) % 4
    clusters[clusters == 2] = 1
    titles = plots.component_titles(clusters, None, 4)
    assert titles == ["#0", "#1", "#2: -", "#3"]
    assert plots.titles_note(titles, labelled=False).startswith("#j = image j (no labels")
    fig = plots.cluster_samples(X, clusters, None, 4, SHAPE, per_cluster=5, title="method=kmeans, k=4: samples")
    gap = plots._gap(SHAPE)
    assert the_image(fig).shape == (4 * (gap + 32) + gap, 5 * (48 + gap) + gap)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == titles
    assert "method=kmeans, k=4: samples" in texts(fig)
    # the empty cluster's row is blank
    top, left = plots._tile_origin(2 * 5, 5, SHAPE, gap, 0)
    assert np.isnan(the_image(fig)[top:top + 32]).all()


def test_cluster_samples_says_when_it_shows_only_the_first_clusters():
    X = np.random.default_rng(3).random((300, 64))
    clusters = np.arange(300) % 30
    y = clusters % 10
    fig = plots.cluster_samples(X, clusters, y, 30, (8, 8), per_cluster=3, max_clusters=20, title="t")
    assert "t (the first 20 of 30 clusters)" in texts(fig)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [f"#{c}: {c % 10}" for c in range(20)]


def test_reconstructions_two_labelled_rows_of_any_shape():
    rng = np.random.default_rng(4)
    originals, approximations = rng.random((6, 32 * 48)), rng.random((6, 32 * 48))
    fig = plots.reconstructions(originals, approximations, SHAPE, "held out")
    gap = plots._gap(SHAPE)
    grid = the_image(fig)
    assert grid.shape == (2 * (gap + 32) + gap, 6 * (48 + gap) + gap)
    top, left = plots._tile_origin(6 + 2, 6, SHAPE, gap, 0)  # second row: the reconstructions
    tile = approximations[2].reshape(SHAPE)
    np.testing.assert_allclose(grid[top:top + 32, left:left + 48], (tile - tile.min()) / np.ptp(tile))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["original", "reconstruction"]


@pytest.mark.parametrize("n", [1, 3, 50])
def test_gallery_width_fits_its_title_and_two_side_by_side(n):
    images = np.random.default_rng(5).random((n, 28 * 28))
    fig = plots.gallery(images, (28, 28), [f"#{i}" for i in range(n)], "method=kmeans, k=%d: centroids" % n)
    width = fig.get_figwidth() * 90
    # at least 4 inches for the title; 5 a row up to 20 images keeps one gallery under half a page
    assert width >= 4 * 90 and (width <= 500 if n <= 20 else width <= 1000)


def test_loss_curve_labels_the_seconds_at_the_iteration_ticks():
    loss = 100 * 0.9 ** np.arange(40) + 50
    seconds = np.cumsum(np.r_[0.5, np.full(38, 0.01), 3.0])  # uneven: a slow first and last iteration
    fig = plots.loss_curve(loss, seconds, "loss")
    ax = fig.axes[0]
    FigureCanvasAgg(fig).draw()
    (top,) = ax.child_axes
    ticks = top.get_xticks()
    labels = [t.get_text() for t in top.get_xticklabels()]
    assert len(ticks) >= 3 and labels == [f"{np.interp(i, np.arange(1, 41), seconds):.2f}" for i in ticks]


# --- an Optuna study's figures (nmfstudy.study_plots) ---------------------------------------

def test_slices_are_a_balanced_grid_with_log_and_categorical_axes():
    from nmfstudy import study_plots

    params = {"k": [5, 20, 40, 10], "alpha": [1e-4, 1e-2, 1e-3, 1e-1], "weight": ["heat", "binary", "heat", None],
              "n_neighbors": [5, 10, 15, 10]}
    fig = study_plots.slices(params, [0.5, 0.7, 0.6, 0.55], [0, 1, 2, 4], "accuracy", log_scale=["alpha"])
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and fig.get_figwidth() <= 1150 / 90  # 2 x 2, within the report's width
    by_name = {ax.get_xlabel(): ax for ax in panels}
    assert by_name["alpha"].get_xscale() == "log" and by_name["k"].get_xscale() == "linear"
    # round ticks, a few: matplotlib's minor log labels run into each other in a narrow panel
    assert [t.get_text() for t in by_name["alpha"].get_xticklabels()] == ["0.0001", "0.001", "0.01", "0.1"]
    assert [t.get_text() for t in by_name["weight"].get_xticklabels()] == ["binary", "heat"]
    (dots,) = by_name["weight"].collections
    np.testing.assert_allclose(dots.get_offsets(), [[1, 0.5], [0, 0.7], [1, 0.6]])  # the trial without it is left out
    assert "4 completed trials" in fig._suptitle.get_text()


def test_intermediate_values_are_drawn_as_the_loss_and_say_so():
    from nmfstudy import study_plots

    curves = [(0, [5, 10, 15], [-300.0, -250.0, -240.0], False), (1, [5, 10], [-400.0, -390.0], True)]
    fig = study_plots.intermediate_losses(curves, sign=-1.0)
    (ax,) = fig.axes
    drawn = [line.get_ydata() for line in ax.lines]
    assert list(drawn[0]) == [300.0, 250.0, 240.0] and all(min(y) > 0 for y in drawn)
    assert any("told -loss" in t.get_text() for t in fig.texts)
    assert [tuple(line.get_xydata()[0]) for line in ax.lines if line.get_marker() == "x"] == [(10.0, 390.0)]


@pytest.mark.parametrize("n_trials, warned", [(4, True), (25, False)])
def test_importances_say_how_many_trials_they_rest_on(n_trials, warned):
    from nmfstudy import study_plots

    fig = study_plots.importances({"k": 0.7123456, "alpha": 0.2876544}, n_trials, "accuracy")
    written = [t.get_text() for t in fig.texts]
    assert f"parameter importances from {n_trials} completed trials" in written
    assert any("rough guide" in t for t in written) == warned
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["alpha", "k"]  # most important on top
    assert [t.get_text() for t in ax.texts] == ["0.288", "0.712"]  # 3 significant digits
