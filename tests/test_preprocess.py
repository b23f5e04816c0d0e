"""Deskewing by image moments, as the digit sets' own preprocessing (dataset.deskew)."""
import numpy as np
import pytest
from helpers import make_mnist_folder, mlflow_runs, run_train

from nmfstudy import config as settings
from nmfstudy.data import DataError, load_dataset
from nmfstudy.preprocess import deskew, image_moments


def sheared_stroke(slope: float, shape=(28, 28), shift=(0, 0)) -> np.ndarray:
    """A 2-pixel-wide stroke from row 4 to row 23 that leans by `slope` columns per row, moved by `shift`."""
    image = np.zeros(shape, dtype=np.float32)
    for row in range(4, 24):
        col = 13 + slope * (row - 13.5)
        lo = int(np.floor(col))
        frac = col - lo
        image[row, lo] += 1 - frac  # the stroke's 2 pixels, antialiased by the fractional column
        image[row, lo + 1] += 1
        image[row, lo + 2] += frac
    return np.roll(image, shift, axis=(0, 1))


def test_deskew_makes_a_sheared_stroke_upright_and_centred():
    images = np.stack([sheared_stroke(0.4), sheared_stroke(-0.3, shift=(2, -3)), sheared_stroke(0.0)])
    _, before = image_moments(images)
    skew_before = before[:, 0, 1] / before[:, 0, 0]
    assert abs(skew_before[0] - 0.4) < 0.02 and abs(skew_before[1] + 0.3) < 0.02  # the leans it was drawn with

    out = deskew(images.reshape(3, -1), (28, 28))
    assert out.shape == (3, 784) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= images.max() + 1e-6  # bilinear: within the input's range
    centroid, after = image_moments(out.reshape(3, 28, 28))
    np.testing.assert_allclose(after[:, 0, 1] / after[:, 0, 0], 0, atol=0.01)  # upright
    np.testing.assert_allclose(centroid, 13.5, atol=0.05)  # the ink's centroid at the centre
    # the ink is kept (apart from what interpolation spreads): the stroke's length, not a blur of it
    np.testing.assert_allclose(out.sum(axis=1), images.reshape(3, -1).sum(axis=1), rtol=0.02)


def test_deskew_leaves_an_upright_centred_stroke_and_a_blank_image_alone():
    upright = np.zeros((28, 28), np.float32)
    upright[5:23, 13:15] = 1  # centroid (13.5, 13.5), no skew
    blank = np.zeros((28, 28), np.float32)
    out = deskew(np.stack([upright, blank]).reshape(2, -1), (28, 28))
    np.testing.assert_array_equal(out, np.stack([upright, blank]).reshape(2, -1))


def test_deskew_takes_integer_pixels_and_non_square_images():
    images = (np.stack([sheared_stroke(0.5)[:, 2:26]]) * 100).astype(np.uint8)  # 28 x 24
    out = deskew(images.reshape(1, -1), (28, 24))
    assert out.dtype == np.float32 and out.shape == (1, 28 * 24) and out.min() >= 0
    _, cov = image_moments(out.reshape(1, 28, 24))
    assert abs(cov[0, 0, 1] / cov[0, 0, 0]) < 0.01


def test_load_dataset_deskews_train_and_test_and_its_fingerprint_says_so(tmp_path):
    folder = make_mnist_folder(tmp_path / "mnist")
    raw = load_dataset("mnist", dir=str(folder))
    upright = load_dataset("mnist", dir=str(folder), deskew=True)
    assert raw.preprocessing == () and upright.preprocessing == ("deskew",)
    np.testing.assert_allclose(upright.X_train, deskew(raw.X_train, (28, 28)))
    np.testing.assert_allclose(upright.X_test, deskew(raw.X_test, (28, 28)))
    assert upright.X_train.dtype == np.float32 and upright.X_train.min() >= 0 and upright.X_train.max() <= 1
    assert upright.fingerprint.startswith("mnist-40x784-") and upright.fingerprint != raw.fingerprint
    assert load_dataset("mnist", dir=str(folder), deskew=True).fingerprint == upright.fingerprint


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_load_dataset_refuses_a_deskew_that_is_not_true_or_false(value):
    with pytest.raises(DataError, match=f"^deskew must be true or false; got {value!r}$"):
        load_dataset("digits", deskew=value)


def test_the_mnist_sets_deskew_by_default_the_others_do_not(compose):
    assert compose()["dataset"]["deskew"] is True  # mnist_5k
    assert compose("dataset=mnist")["dataset"]["deskew"] is True
    assert compose("dataset=mnist", "dataset.deskew=false")["dataset"]["deskew"] is False
    assert compose("dataset=images")["dataset"]["deskew"] is False
    assert compose("dataset=digits")["dataset"]["deskew"] is False  # measured: it lowers their accuracy


def test_a_bad_deskew_is_one_line_naming_the_key(compose):
    with pytest.raises(settings.ConfigError, match="^dataset.deskew must be true or false; got 'maybe'$"):
        settings.check(compose("dataset.deskew=maybe"))
    cfg = compose()
    del cfg["dataset"]["deskew"]  # a user's own dataset file without the key: no deskew
    settings.check(cfg)


def test_a_run_logs_deskew_as_a_param_and_switches_it_off(tmp_path):
    folder = make_mnist_folder(tmp_path / "mnist")
    result = run_train(tmp_path, "dataset=mnist", f"dataset.dir={folder}", "dataset.deskew=false", "method=kmeans",
                       "tracking.figures=none", "tracking.model=none")
    assert result.returncode == 0, result.stderr
    (run,) = mlflow_runs(tmp_path)
    assert run.data.params["dataset.deskew"] == "False"
    # the raw pixels were fitted: the run's data is load_dataset's without deskew, not with it
    assert run.data.tags["dataset_fingerprint"] == load_dataset("mnist", dir=str(folder)).fingerprint
    assert run.data.tags["dataset_fingerprint"] != load_dataset("mnist", dir=str(folder), deskew=True).fingerprint
