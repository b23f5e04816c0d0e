"""The clustering methods as scikit-learn estimators, one module each.

- :class:`NMFClustering`: NMF X ~ W H (plain, L1/L2 or Hoyer-sparse), clusters from W;
- :class:`KMeansClustering`: K-means from the study's starts (scikit-learn's ``KMeans``);
- :class:`MiniBatchKMeansClustering`: mini-batch K-means (scikit-learn's ``MiniBatchKMeans``);
- :class:`GNMF`: graph-regularized NMF (Cai et al. 2011);
- :class:`SymNMF`: symmetric NMF of the kNN graph (Kuang et al. 2012);
- :class:`NMFR`: NMF using graph random walk (Yang et al. 2012);
- :class:`DCD`: low-rank doubly stochastic decomposition (Yang & Oja 2012).

A run's config builds one with Hydra's ``_target_`` (``conf/method/<name>.yaml``); a new method
is one module here and one config file there.
"""

from __future__ import annotations

from ._base import BasisEstimator, ClusteringEstimator, GraphEstimator, IterationCallback
from .gnmf import GNMF
from .kmeans import KMeansClustering, MiniBatchKMeansClustering
from .nmf import NMFClustering
from .random_walk import DCD, NMFR
from .symnmf import SymNMF

ESTIMATORS = (NMFClustering, KMeansClustering, MiniBatchKMeansClustering, GNMF, SymNMF, NMFR, DCD)

__all__ = ["BasisEstimator", "ClusteringEstimator", "GraphEstimator", "IterationCallback", "ESTIMATORS",
           "NMFClustering", "KMeansClustering", "MiniBatchKMeansClustering", "GNMF", "SymNMF", "NMFR", "DCD"]
