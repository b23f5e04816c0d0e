"""A run's fitted estimator as an MLflow model and its training data as an MLflow dataset.

- `log_model`: the estimator in MLflow's scikit-learn flavor (``mlflow.sklearn.load_model`` gives
  it back), whose pyfunc ``predict`` turns images (float32, samples x pixels, in the run's pixel
  scale) into clusters and refuses bad ones in one line (:mod:`.model_flavor`); with a signature,
  an input example, and, where the run had labels, the cluster-to-label map of the training
  majority vote in the model's metadata (``model.metadata.metadata["cluster_labels"]``:
  predicted labels are ``cluster_labels[clusters]``).
- `log_dataset`: the training data as the run's input (name, the fingerprint as digest, source).

A study's best model in the Model Registry: :mod:`.registry`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in its run
MODEL_POLICIES = ("all", "final", "none")


def _requirements() -> list[str]:
    """The model's pip requirements, pinned to this environment (MLflow would otherwise infer them
    by loading the model in a subprocess: seconds per run)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "numpy", "scipy", "scikit-learn", "threadpoolctl")]


def signature(n_features: int):
    """The models' signature: float32 images (samples x `n_features` pixels) in, int64 clusters out."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # unnamed tensors: the pyfunc model takes and gives plain arrays (a named one would be a dict)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_features))]),
                          outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]))


def log_model(estimator: Any, example: np.ndarray, cluster_labels: np.ndarray | None = None,
              label_names: list[str] | None = None, preprocessing: tuple[str, ...] = (),
              image_shape: tuple[int, int] | None = None) -> Any:
    """Log the fitted estimator as the active run's MLflow model (scikit-learn flavor, pyfunc predict -> clusters).

    The package's own code travels with the model (``code_paths``), so that a model loads where
    this project is not installed, as long as its pinned requirements are.

    Parameters
    ----------
    estimator : ClusteringEstimator
        The fitted estimator.
    example : ndarray of shape (n, n_features), float32
        A few input images: the model's input example.
    cluster_labels : ndarray of shape (k,), int, or None
        The label each cluster stands for (the training majority vote); None without labels.
    label_names : list of str or None
        What each label means (an image folder's sub-folders); None for the digits.
    preprocessing : tuple of str
        The steps the data set applied to every image before the fit (``("deskew",)``), recorded in
        the model's metadata with `image_shape`: the pyfunc applies them to the images it is given,
        while ``mlflow.sklearn.load_model``'s estimator takes images as the steps left them.
    image_shape : (int, int) or None
        (rows, columns) of an image.

    Returns
    -------
    mlflow.models.model.ModelInfo
    """
    from mlflow.models import Model

    from . import model_flavor

    metadata: dict[str, Any] = {"method": estimator.name, "n_clusters": int(estimator.k)}
    if cluster_labels is not None:
        metadata["cluster_labels"] = [int(label) for label in cluster_labels]
    if label_names is not None:
        metadata["label_names"] = list(label_names)
    if preprocessing:
        metadata["preprocessing"] = list(preprocessing)
        metadata["image_shape"] = [int(n) for n in image_shape]
    package = Path(__file__).resolve().parents[1]
    # pickle, chosen: skops would need every class of the package declared trusted at load time; MLflow's
    # warning about it would repeat in every run's output
    sklearn_log = logging.getLogger("mlflow.sklearn")
    level, sklearn_log.level = sklearn_log.level, logging.ERROR
    try:
        # as mlflow.sklearn.log_model does, with the flavor module that checks the pyfunc's input
        return Model.log(
            artifact_path=None, name=MODEL_NAME, flavor=model_flavor, sk_model=estimator,
            signature=signature(example.shape[1]),
            input_example=np.ascontiguousarray(example, dtype=np.float32), pip_requirements=_requirements(),
            code_paths=[str(package)], metadata=metadata, serialization_format="pickle",
            # MLflow would reload the model and predict the example in every run (0.18 s of a default run,
            # measured in bench/RESULTS.md); tests/test_models.py checks that round trip once instead
            validate_serving_input=False,
        )
    finally:
        sklearn_log.setLevel(level)


def log_dataset(X: np.ndarray, y: np.ndarray | None, *, name: str, digest: str, source: str) -> None:
    """Record the training data as the active run's input (context ``training``): lineage, not a copy.

    Parameters
    ----------
    X, y : ndarray
        The training images and labels (None without labels): their shape and schema are recorded.
    name : str
        The data set's name.
    digest : str
        Its fingerprint (MLflow keeps 36 characters of it).
    source : str
        Where it was read from (the IDX folder, the package file, the image folder, a URL).
    """
    import mlflow.data
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.exceptions import MlflowException

    if source.startswith(("http://", "https://")):
        kind = "http"
    else:
        kind, source = "local", str(Path(source).expanduser().resolve())
    # the source named outright: a local path resolves to two registered source classes (MLflow warns)
    where = get_dataset_source_from_json(json.dumps({"uri": source, "url": source}), kind)
    # the digest is given: MLflow would otherwise hash the pixels again
    dataset = mlflow.data.from_numpy(X, source=where, targets=y, name=name, digest=digest[-36:])
    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException as error:
        if not _lost_insert_race(error):
            raise
        # MLflow's store looks the data set up, then inserts it; two runs of one experiment logging the
        # same data at once (a parallel sweep's first trials) both miss it, and the second insert breaks
        # the (experiment, name, digest) key. Logged again, the store finds the row the other run wrote.
        mlflow.log_input(dataset, context="training")


def _lost_insert_race(error: Exception) -> bool:
    """Whether `error` is a unique-key violation (SQLite's or PostgreSQL's, direct or through a server)."""
    text = str(error)
    return "UNIQUE constraint failed" in text or "violates unique constraint" in text
