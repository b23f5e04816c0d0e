"""The numerical core: NMF solvers and the graphs they use, as plain functions over arrays.

- :mod:`.solvers`: NMF by multiplicative updates and HALS (plain and extrapolated), Hoyer's
  projection, the Frobenius loss.
- :mod:`.graph_nmf`: graph-regularized NMF (GNMF) and symmetric NMF (SymNMF) of a kNN graph.
- :mod:`.graph`: exact kNN graphs of the samples, cached on disk.
- :mod:`.initialization`: starts for NMF factors and K-means centroids.

Nothing here knows about configs, MLflow or Hydra; :mod:`nmfstudy.methods` wraps these
functions as clustering methods.
"""
