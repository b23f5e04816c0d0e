"""nmfstudy: NMF against K-means on handwritten digits.

The methods are scikit-learn estimators, importable from here::

    from nmfstudy import NMFR, DCD, SymNMF, GNMF, NMFClustering, KMeansClustering, MiniBatchKMeansClustering

They load on first use (PEP 562), so that ``import nmfstudy.study_names`` (the sweeper plugin's
names) stays free of scikit-learn.
"""

ESTIMATOR_NAMES = ("NMFClustering", "KMeansClustering", "MiniBatchKMeansClustering", "GNMF", "SymNMF", "NMFR", "DCD")
__all__ = list(ESTIMATOR_NAMES)


def __getattr__(name: str):
    if name in ESTIMATOR_NAMES:
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'nmfstudy' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *ESTIMATOR_NAMES])
