"""Bad input, round three (issue 25): a run fits the data it logs, or stops with one line.

Through the real command line: images of two sizes, an image too large to hold, more samples than
there are, a split that leaves fewer than asked, labels with a single image, a folder with one
label; in the library: a file that vanishes while the folder is read.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT, make_image_folder, mlflow_runs, run_train, the_one_line
from PIL import Image

from nmfstudy import data as data_module
from nmfstudy.data import DataError, load_dataset, read_image_folder
from nmfstudy.metrics import LABEL_METRICS


def _images(tmp_path, folder, *overrides, **kwargs):
    return run_train(tmp_path, "dataset=images", f"dataset.dir={folder}", f"dataset.cache_dir={tmp_path / 'cache'}",
                     "k=2", *overrides, **kwargs)


# --- images of two sizes -------------------------------------------------------------------------

def test_images_of_two_sizes_are_refused_naming_two_of_them(tmp_path):
    folder = make_image_folder(tmp_path / "digits", shape=(20, 24), n_per_label=4)
    # sorted first: without the check, every image became 1 pixel and the run FINISHED with loss 0
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(folder / "bottom_right" / "0.png")
    result = _images(tmp_path, folder, fresh_store=True)
    assert the_one_line(result) == (
        f"error: dataset.dir: {folder}/bottom_right/0.png is 1x1 pixels but {folder}/bottom_right/1_000.png is 20x24 "
        "(height x width): the images must all be one size, or set dataset.image_size=[height, width] to resize "
        "every image to it")
    # not "k must be at most the number of pixels (1)", nor any store or cache
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()


def test_images_of_two_sizes_are_resized_when_image_size_asks(tmp_path):
    folder = make_image_folder(tmp_path / "digits", shape=(20, 24), n_per_label=4)
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(folder / "bottom_right" / "0.png")
    result = _images(tmp_path, folder, "dataset.image_size=[10,12]", "method=kmeans")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert (run.data.params["image_shape"], run.data.params["dataset.image_size"]) == ("10x12", "[10, 12]")
    assert run.data.tags["dataset_fingerprint"].startswith("images-7x120-")  # 9 images, 2 held out


def test_an_image_too_large_to_hold_is_one_line_before_its_pixels_are_read(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    # 144 million pixels: as the first image's size, 200 of them asked for 27 GiB
    Image.new("L", (12000, 12000)).save(folder / "a_huge.png")
    Image.new("L", (20, 24)).save(folder / "b_small.png")
    result = _images(tmp_path, folder, fresh_store=True)
    assert the_one_line(result) == (
        f"error: dataset.dir: {folder}/a_huge.png is 12000x12000 pixels (height x width), more than the 4,194,304 an "
        "image may give a sample: set dataset.image_size=[height, width] (e.g. 28) to shrink every image")
    assert "DecompressionBomb" not in result.stdout + result.stderr
    result = _images(tmp_path, folder, "dataset.image_size=5000", fresh_store=True)
    assert the_one_line(result) == ("error: dataset.image_size must give at most 4,194,304 pixels (e.g. [2048, 2048]); "
                                    "got 5000, 25,000,000 pixels")


def test_a_file_that_vanishes_while_the_folder_is_read_is_one_line_naming_it(tmp_path, monkeypatch):
    folder = make_image_folder(tmp_path / "images", shape=(4, 4), n_per_label=2)
    gone = folder / "top_left" / "0_001.png"
    listed = data_module._image_files

    def listed_then_removed(place):
        files = listed(place)
        if place == gone.parent:  # as another process would, between the listing and the reading
            gone.unlink()
        return files

    monkeypatch.setattr(data_module, "_image_files", listed_then_removed)
    with pytest.raises(DataError) as err:
        read_image_folder(folder, cache_dir=tmp_path / "cache")
    assert err.value.param == "dir"
    assert str(err.value) == (f"dir: cannot read image {gone}: No such file or directory (was it moved or deleted "
                              "while the folder was read?)")


# --- more samples than there are -------------------------------------------------------------------

SAMPLES = [
    (["dataset=digits", "dataset.n_samples=2000"],
     "error: dataset.n_samples must be at most 1437, the training samples of digits (1797 less the 360 that "
     "test_size=0.2 holds out); got 2000"),
    (["dataset=mnist_5k", "dataset.n_samples=4500"],
     "error: dataset.test_size=0.2 holds out 1000 of the 5000 samples of mnist_5k and leaves 4000 to fit, fewer than "
     "n_samples=4500: lower test_size, or n_samples to at most 4000"),
    (["dataset=digits", "dataset.n_samples=1000", "dataset.test_size=0.5"],
     "error: dataset.test_size=0.5 holds out 899 of the 1797 samples of digits and leaves 898 to fit, fewer than "
     "n_samples=1000: lower test_size, or n_samples to at most 898"),
]


@pytest.mark.parametrize("overrides, line", SAMPLES, ids=[" ".join(o) for o, _ in SAMPLES])
def test_more_samples_than_the_split_leaves_is_one_line(tmp_path, overrides, line):
    result = run_train(tmp_path, *overrides, fresh_store=True)
    assert the_one_line(result) == line
    assert not (tmp_path / "mlflow.db").exists()  # no run logs n_samples over fewer samples


def test_the_most_samples_there_are_is_accepted():
    assert load_dataset("digits", n_samples=1437).X_train.shape == (1437, 64)


# --- labels ----------------------------------------------------------------------------------------

def test_a_label_with_a_single_image_is_named_by_its_folder(tmp_path):
    folder = make_image_folder(tmp_path / "images", shape=(6, 6), n_per_label=4)
    (folder / "10").mkdir()
    Image.new("L", (6, 6)).save(folder / "10" / "only.png")
    result = _images(tmp_path, folder, fresh_store=True)
    # not dataset.test_size, which no value fixes, and the folder's name rather than its label number
    assert the_one_line(result) == (
        f"error: dataset.dir: {folder}: the label sub-folder 10 holds a single image; each label needs at least 2 "
        "(one to fit, one to test): add images or remove that sub-folder")


def test_two_hundred_labels_with_a_single_image_make_a_short_line(tmp_path):
    folder = tmp_path / "many"
    for i in range(200):
        (folder / f"label_{i:03d}").mkdir(parents=True)
        Image.new("L", (4, 4), color=i).save(folder / f"label_{i:03d}" / "a.png")
    line = the_one_line(_images(tmp_path, folder, fresh_store=True))
    assert line == (f"error: dataset.dir: {folder}: the label sub-folders label_000, label_001, label_002, label_003, "
                    "label_004, ... (200 in all) hold a single image; each label needs at least 2 (one to fit, one to "
                    "test): add images or remove those sub-folders")


def test_a_folder_with_one_label_logs_no_label_metric_and_says_so(tmp_path):
    folder = make_image_folder(tmp_path / "one", shape=(8, 8), labels=("cats", "cats"), n_per_label=6)
    result = _images(tmp_path, folder, "method=kmeans")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert not set(LABEL_METRICS) & set(run.data.metrics)  # never an accuracy of 1.0
    assert run.data.metrics["n_clusters_used"] == 2 and "silhouette" in run.data.metrics
    said = [line for line in (result.stdout + result.stderr).splitlines() if "sits in one sub-folder" in line]
    assert len(said) == 1 and said[0].endswith(
        f"label metrics (accuracy, nmi, ari, test_accuracy, ...) not scored: every image of dataset.dir={folder} sits "
        "in one sub-folder (cats), and one label scores any clustering perfectly; make one sub-folder per label")


# --- a report's folder that cannot be made -------------------------------------------------------------

def test_a_report_folder_that_cannot_be_made_is_one_line(tmp_path):
    from mlflow.tracking import MlflowClient

    from nmfstudy import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = tracking.experiment_id(client, tracking.resolve_store(uri, ROOT), "nmfstudy")
    run = client.create_run(exp_id, run_name="nmf k=10", tags={"nmfstudy.kind": "run"})
    for key, value in {"method": "nmf", "k": "10", "sparsity": "none"}.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "accuracy", 0.5)
    client.set_terminated(run.info.run_id)
    (tmp_path / "a_file").write_text("in the way")
    out = tmp_path / "a_file" / "report"  # a folder inside a file: even root cannot make it
    result = run_train(tmp_path, f"report.out={out}", script="src/report.py")
    assert the_one_line(result) == (f"error: report.out={out}: cannot make the folder (Not a directory); pass "
                                    "report.out=FOLDER where it can be written")
    assert [r.info.run_id for r in mlflow_runs(tmp_path)] == [run.info.run_id]  # no report run logged
