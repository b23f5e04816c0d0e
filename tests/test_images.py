"""dataset=images: a user's own PNG/JPEG files, labelled (one sub-folder per label) or not, of any size.

End to end through the real command line on 20x24 and 24x20 images (not MNIST's 28x28); the folder's
reading, conversion and cache in the library; the objective of a study on images without labels.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import artifact_paths, make_image_folder, mlflow_runs, quadrant_image, run_train
from PIL import Image

from nmfstudy import config as settings
from nmfstudy.data import DataError, load_dataset, parse_image_size, read_image_folder, scan_image_folder
from nmfstudy.metrics import LABEL_METRICS

# --- end to end ---------------------------------------------------------------------------------

def test_labelled_images_of_20x24_are_scored_with_labels_and_drawn_in_their_shape(tmp_path):
    folder = make_image_folder(tmp_path / "shapes", shape=(20, 24))
    # one larger image: resized to 20x24, as dataset.image_size asks (without it, refused: see test_bad_data.py)
    Image.fromarray(quadrant_image((40, 48), 1, np.random.default_rng(1))).save(folder / "bottom_right" / "big.png")
    result = run_train(tmp_path, "dataset=images", f"dataset.dir={folder}", f"dataset.cache_dir={tmp_path / 'cache'}",
                       "dataset.image_size=[20,24]", "k=2", figures_and_model=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert (run.data.params["dataset"], run.data.params["image_shape"]) == ("images", "20x24")
    # 25 images, a stratified fifth held out: 20 train the method, each of 480 pixels
    assert run.data.tags["dataset_fingerprint"].startswith("images-20x480-")
    metrics = run.data.metrics
    assert set(LABEL_METRICS) <= set(metrics)
    assert metrics["hungarian_accuracy"] == 1.0 and metrics["test_accuracy"] == 1.0  # the quadrants part cleanly
    assert artifact_paths(tmp_path, run) >= {"figures/components.png", "figures/confusion.png",
                                         "figures/reconstructions.png", "figures/cluster_samples.png"}
    assert "not scored" not in result.stdout + result.stderr


def test_unlabelled_images_run_every_method_and_skip_the_label_metrics_with_one_line(tmp_path):
    folder = make_image_folder(tmp_path / "loose", shape=(24, 20), labels=None)
    cache = tmp_path / "cache"
    result = run_train(tmp_path, "dataset=images", f"dataset.dir={folder}", f"dataset.cache_dir={cache}", "k=2",
                       "method=nmf,kmeans", multirun=True, figures_and_model=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    runs = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("nmfstudy.kind") == "run"]
    assert sorted(r.data.params["method"] for r in runs) == ["kmeans", "nmf"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.params["image_shape"] == "24x20"
        metrics = run.data.metrics
        assert not set(LABEL_METRICS) & set(metrics)
        assert metrics["silhouette"] > 0.5 and metrics["n_clusters_used"] == 2 and "loss" in metrics
        assert ("sparsity_W" in metrics) == (run.data.params["method"] == "nmf")
        figures = artifact_paths(tmp_path, run)
        assert {"figures/components.png", "figures/reconstructions.png", "figures/cluster_samples.png"} <= figures
        assert "figures/confusion.png" not in figures
    skipped = [line for line in output.splitlines() if "not scored" in line]
    assert len(skipped) == 2 and all(
        line.endswith(f"accuracy, hungarian_accuracy, nmi, ari, test_accuracy not scored: the images of "
                      f"dataset.dir={folder} have no labels (fewer than two label sub-folders)") for line in skipped)
    # the first job read the folder and cached it; the second read the cache
    (cached,) = cache.glob("*.npz")
    assert output.count("read 24 images of") == 1 and output.count(f"from the cache {cached}") == 1


# --- the folder, its conversion and its cache ----------------------------------------------------

def test_labels_are_the_sub_folders_in_number_order_when_all_are_numbers(tmp_path):
    for name, which in (("10", 0), ("2", 1)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(quadrant_image((6, 5), which, np.random.default_rng(i))).save(tmp_path / name / f"{i}.png")
    (tmp_path / "2" / "notes.txt").write_text("not an image: skipped")
    (tmp_path / "empty").mkdir()  # no images: no label
    found = scan_image_folder(tmp_path)
    assert found.label_names == ("2", "10")
    assert [f"{p.parent.name}/{p.name}" for p in found.files] == ["2/0.png", "2/1.png", "2/2.png",
                                                                  "10/0.png", "10/1.png", "10/2.png"]
    np.testing.assert_array_equal(found.labels, [0, 0, 0, 1, 1, 1])
    data = load_dataset("images", dir=str(tmp_path), test_size=1 / 3)
    assert data.label_names == ("2", "10") and data.image_shape == (6, 5) and data.X_train.shape == (4, 30)
    np.testing.assert_array_equal(np.bincount(data.y_train), [2, 2])


def test_pixels_are_grayscale_in_unit_range_and_sizes_are_height_then_width(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = (255, 255, 255)
    rgb[1, 1] = (255, 0, 0)  # pure red: luma 0.299
    Image.fromarray(rgb).save(tmp_path / "a_rgb.png")
    rgba = np.zeros((4, 6, 4), np.uint8)  # fully transparent: white, as a viewer shows it
    Image.fromarray(rgba).save(tmp_path / "b_transparent.png")
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "c_16bit.png")  # full scale, not clipped
    pixels, found = read_image_folder(tmp_path)
    assert found.labels is None and pixels.shape == (3, 4, 6) and pixels.dtype == np.uint8
    assert (pixels[0, 0, 0], pixels[0, 1, 1], pixels[0, 2, 2]) == (255, 76, 0)
    assert (pixels[1] == 255).all() and (pixels[2] == 255).all()
    data = load_dataset("images", dir=str(tmp_path), image_size=8, test_size=0.34)
    assert data.image_shape == (8, 8) and data.y_train is None and data.y_test is None and not data.has_labels
    every = np.vstack([data.X_train, data.X_test])
    assert every.dtype == np.float32 and every.shape == (3, 64)
    assert np.sort(every.max(axis=1)).tolist() == [1.0, 1.0, 1.0] and (every == 1.0).all(axis=1).sum() == 2
    assert load_dataset("images", dir=str(tmp_path), image_size=[2, 5], test_size=0.34).image_shape == (2, 5)


def test_the_cache_is_reused_and_rebuilt_when_the_size_or_a_file_changes(tmp_path, monkeypatch, caplog):
    folder = make_image_folder(tmp_path / "images", shape=(20, 24), n_per_label=3)
    cache = tmp_path / "cache"
    first = load_dataset("images", dir=str(folder), cache_dir=cache)
    (made,) = cache.glob("*.npz")

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read although the cache holds them")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", no_reading)
        again = load_dataset("images", dir=str(folder), cache_dir=cache)
    np.testing.assert_array_equal(again.X_train, first.X_train)
    assert again.fingerprint == first.fingerprint
    smaller = load_dataset("images", dir=str(folder), cache_dir=cache, image_size=[10, 12])
    assert smaller.X_train.shape[1] == 120 and len(list(cache.glob("*.npz"))) == 2
    # a file rewritten: read again, under another key
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(folder / "top_left" / "0_000.png")
    changed = load_dataset("images", dir=str(folder), cache_dir=cache)
    assert changed.fingerprint != first.fingerprint
    (newest,) = set(cache.glob("*.npz")) - {made, *cache.glob("*10x12*")}
    # a damaged cache file: read again with a warning, and replaced by a sound one
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="nmfstudy.data"):
        assert load_dataset("images", dir=str(folder), cache_dir=cache).fingerprint == changed.fingerprint
    assert f"image cache {newest} is damaged" in caplog.text
    with np.load(newest) as saved:
        assert saved["pixels"].shape == (6, 20, 24) and saved["pixels"].dtype == np.uint8


@pytest.mark.parametrize("value, expected", [(None, None), (16, (16, 16)), ([20, 24], (20, 24)), ((3, 1), (3, 1))])
def test_image_size_is_null_one_side_or_height_and_width(value, expected):
    assert parse_image_size(value) == expected


@pytest.mark.parametrize("value", [0, -3, [20], [20, 24, 3], [20, 0], 2.5, "20x24", True, [20, 2.0]])
def test_a_bad_image_size_names_the_setting(value):
    with pytest.raises(DataError) as err:
        parse_image_size(value)
    assert err.value.param == "image_size"
    assert str(err.value) == ("image_size must be null (the first image's size), an integer N >= 1 (N x N pixels) "
                              f"or [height, width] in pixels, each >= 1 (e.g. [20, 24]); got {value!r}")


def test_bad_folders_are_one_line_naming_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"^dir: .*/nowhere is not a folder \(it must hold PNG/JPEG images\)$"):
        scan_image_folder(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("no image here")
    with pytest.raises(DataError, match=r"^dir: .* holds no PNG or JPEG images \(.png, .jpg, .jpeg\), neither "
                                        r"directly nor in sub-folders$"):
        scan_image_folder(tmp_path)
    make_image_folder(tmp_path, shape=(4, 4), n_per_label=1)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "stray.png")
    with pytest.raises(DataError, match=r"holds images both in sub-folders \(labels: bottom_right, top_left\) and "
                                        r"directly \(stray.png, ...\): put each image in its label's sub-folder"):
        scan_image_folder(tmp_path)
    (tmp_path / "stray.png").unlink()
    with pytest.raises(DataError, match=r"^dir: .*: the label sub-folders bottom_right, top_left hold a single image; "
                                        r"each label needs at least 2 \(one to fit, one to test\): add images or "
                                        r"remove those sub-folders$"):
        load_dataset("images", dir=str(tmp_path))  # one image per label


# --- the objective of a study on images without labels ------------------------------------------

def test_a_study_on_unlabelled_images_needs_an_objective_without_labels(compose, tmp_path):
    loose = make_image_folder(tmp_path / "loose", shape=(4, 4), labels=None, n_per_label=2)
    labelled = make_image_folder(tmp_path / "labelled", shape=(4, 4), n_per_label=2)
    cfg = compose("dataset=images", f"dataset.dir={loose}", "k=2")  # objective: accuracy, the default
    with pytest.raises(settings.ConfigError) as err:
        settings.check(cfg)  # as the Optuna sweeper calls it, before any trial
    assert str(err.value) == (
        "objective must be one of loss, j_clust, fit_time_s, n_iter, n_clusters_used, n_live_components, silhouette, "
        "sparsity_W, sparsity_H (the metrics a run of method=nmf logs on images without labels: "
        f"dataset.dir={loose} has no sub-folder per label), or a list of them; got 'accuracy'")
    settings.check(cfg, optimized=False)  # a plain run: nothing optimizes its objective
    settings.check(compose("dataset=images", f"dataset.dir={loose}", "k=2", "objective=[silhouette,fit_time_s]"))
    settings.check(compose("dataset=images", f"dataset.dir={labelled}", "k=2"))
    with pytest.raises(settings.ConfigError, match=r"^dataset.image_size must be null .* got \[4, 4, 4\]$"):
        settings.check(compose("dataset=images", f"dataset.dir={labelled}", "dataset.image_size=[4,4,4]"))


def test_a_study_without_labels_tunes_the_graph_by_its_clusters_modularity(tmp_path):
    """The dcd preset on unlabelled images, objective=modularity: each trial's value is the modularity its
    run logged, and the trials search the graph's weights and unit norm as well as DCD's settings."""
    optuna = pytest.importorskip("optuna")
    folder = make_image_folder(tmp_path / "loose", shape=(12, 12), labels=None)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_train(tmp_path, "hparams_search=dcd", "dataset=images", f"dataset.dir={folder}", "k=2",
                       "objective=modularity", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=3",
                       "graph.n_neighbors=choice(3,5)", "method.exact_restarts=2",
                       "tracking.figures=none", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all({"graph.n_neighbors", "graph.weight", "graph.normalize", "method.prior"} <= set(t.params)
               for t in trials)
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in mlflow_runs(tmp_path)
            if "optuna.trial_number" in r.data.tags}
    for trial in trials:
        metrics = runs[trial.number].data.metrics
        assert trial.value == pytest.approx(metrics["modularity"]) and 0 < trial.value < 1
        assert not set(LABEL_METRICS) & set(metrics)
