"""The numerical core: NMF solvers and the graphs they use, as plain functions over arrays.

- :mod:`.solvers`: NMF by multiplicative updates and HALS (plain and extrapolated), Hoyer's
  projection, the Frobenius loss.
- :mod:`.graph_nmf`: graph-regularized NMF (GNMF) and symmetric NMF (SymNMF) of a kNN graph.
- :mod:`.random_walk`: NMF using graph random walk (NMFR), with the random-walk product by
  conjugate gradients.
- :mod:`.dcd`: low-rank doubly stochastic decomposition (DCD) of a graph.
- :mod:`.multilevel`: the multilevel starts of NMFR, DCD and SymNMF (embeddings of the graph,
  over-clustering, the search for a grouping of the sub-clusters).
- :mod:`.partition_search`: the local search for a partition of a coarse graph.
- :mod:`.graph`: exact kNN graphs of the samples, cached on disk.
- :mod:`.initialization`: starts for NMF factors and K-means centroids.

Every solver returns a :class:`FitResult`. The package exports it, the callback type and the
declarations of the arguments the solvers share (``MAX_ITER``, ``TOL``, ``SPARSENESS``,
``PENALTIES``, see :mod:`nmfstudy.params`), for the methods that pass those arguments on.

Nothing here knows about configs, MLflow or Hydra; :mod:`nmfstudy.methods` wraps these
functions as clustering methods.
"""

from ._common import MAX_ITER, PENALTIES, SPARSENESS, TOL, Callback, FitResult

__all__ = ["Callback", "FitResult", "MAX_ITER", "PENALTIES", "SPARSENESS", "TOL"]
