"""The models' MLflow flavor: scikit-learn's, with a pyfunc that checks the images before it predicts.

MLflow's custom-flavor route (``Model.log(flavor=<module>)``): `save_model` writes the estimator
exactly as ``mlflow.sklearn.save_model`` does (so ``mlflow.sklearn.load_model`` gives it back),
then points the ``python_function`` flavor's loader at this module. Its pyfunc answers bad
images (not 2-D, NaN or infinite, negative where the method needs non-negative pixels) with an
``MlflowException`` (INVALID_PARAMETER_VALUE): one line naming what it expects, which
``mlflow models serve`` returns as a 400 without a stack trace, where a ValueError from the
estimator would come back as an "unexpected error" with one. The signature's own checks (the
number of pixels, float32) run before it.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import mlflow.sklearn
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import FLAVOR_NAME as PYFUNC


def save_model(path: str, mlflow_model: Any, **kwargs: Any) -> None:
    """`mlflow.sklearn.save_model(path=..., mlflow_model=..., **kwargs)`, its pyfunc loaded by this module."""
    kwargs.pop("validate_serving_input", None)  # Model.log's own option, passed on to the flavor with the rest
    mlflow.sklearn.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors[PYFUNC]["loader_module"] = __name__
    mlflow_model.save(str(Path(path) / "MLmodel"))


def _load_pyfunc(path: str, model_config: Any = None) -> CheckedClusters:
    """The pyfunc of a saved model (MLflow calls this with the model's folder)."""
    from mlflow.models import Model

    saved = Model.load(str(Path(path) / "MLmodel"))
    pickled = saved.flavors[mlflow.sklearn.FLAVOR_NAME]["pickled_model"]
    metadata = saved.metadata or {}
    with open(Path(path) / pickled, "rb") as f:
        return CheckedClusters(pickle.load(f), metadata.get("preprocessing", ()), metadata.get("image_shape"))


class CheckedClusters:
    """A fitted estimator's `predict`, behind checks that name what the model takes.

    Parameters
    ----------
    estimator : ClusteringEstimator
        The fitted estimator.
    preprocessing : sequence of str, default ()
        The steps its data set applied to every image before the fit (``"deskew"``): the pyfunc
        applies them to the images it is given, so that it takes images as they come.
    image_shape : (int, int) or None
        (rows, columns) of an image, which the steps need.
    """

    def __init__(self, estimator: Any, preprocessing: Any = (), image_shape: Any = None) -> None:
        self.estimator = estimator
        self.preprocessing = tuple(preprocessing)
        self.image_shape = None if image_shape is None else tuple(image_shape)

    def get_raw_model(self) -> Any:
        """The estimator itself (``PyFuncModel.get_raw_model()``)."""
        return self.estimator

    def predict(self, data: Any, params: dict | None = None) -> np.ndarray:
        """The cluster of each image (a row of pixels).

        Raises
        ------
        MlflowException
            INVALID_PARAMETER_VALUE, naming the shape and range the model takes.
        """
        X = np.asarray(data)
        n_features = self.estimator.n_features_in_
        pixels = "non-negative " if self.estimator.needs_nonnegative_data else ""
        expected = f"this model takes float32 images as rows of {n_features} {pixels}pixels"
        if X.ndim != 2:
            raise MlflowException(f"{expected}; got an array of shape {X.shape}", INVALID_PARAMETER_VALUE)
        if not np.isfinite(X).all():
            raise MlflowException(f"{expected}; got NaN or infinite values", INVALID_PARAMETER_VALUE)
        if self.estimator.needs_nonnegative_data and X.size and X.min() < 0:
            raise MlflowException(f"{expected}; got a negative value ({X.min():g})", INVALID_PARAMETER_VALUE)
        if "deskew" in self.preprocessing:
            from nmfstudy.preprocess import deskew

            X = deskew(X, self.image_shape)
        return self.estimator.predict(X)
