"""The code's structure: no import cycle, MLflow behind tracking, a method is one module and one config file."""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from nmfstudy import config as settings
from nmfstudy import methods
from nmfstudy.methods import ClusteringEstimator
from nmfstudy.metrics import evaluate, metric_names
from nmfstudy.params import Interval

SRC = Path(__file__).resolve().parents[1] / "src"
# Modules that may import mlflow: tracking, and the report package's reader of the store.
MLFLOW_HOMES = ("nmfstudy.tracking", "nmfstudy.report.store")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, as absolute names.

    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``
    (Python runs a package's ``__init__`` before its submodules anyway: that is no dependency).
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of src/ it imports (a package's own __init__ counts as its name)."""
    paths = sorted(SRC.rglob("*.py"))
    own = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        graph[module_name(path)] = {m for m in imports(path) if m in own and m != module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_of_src_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "nmfstudy.methods._base" in graph["nmfstudy.methods.nmf"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_tracking_and_the_report_store_import_mlflow():
    importers = sorted(module_name(p) for p in SRC.rglob("*.py")
                       if any(m == "mlflow" or m.startswith("mlflow.") for m in imports(p)))
    assert importers and all(m.startswith(MLFLOW_HOMES) for m in importers), importers


def test_the_sweeper_plugin_imports_only_the_shared_names_of_the_application():
    """Storage, project root and tracker reach the plugin through its config (hydra.sweeper.*)."""
    plugin = [p for p in SRC.rglob("*.py") if module_name(p).startswith("hydra_plugins.")]
    used = {m for p in plugin for m in imports(p) if m.startswith("nmfstudy")}
    assert plugin and used == {"nmfstudy.study_names", "nmfstudy.processes"}, used


# Modules that sweeper plugin, report pages and jobs share: the standard library and each other only,
# so that importing one costs nothing (no MLflow, numpy or Hydra) and makes no cycle.
LIGHT = {"nmfstudy.study_names": set(), "nmfstudy.processes": {"nmfstudy.study_names"},
         "nmfstudy.ui_links": {"nmfstudy.study_names"}}


@pytest.mark.parametrize("name", sorted(LIGHT))
def test_the_shared_names_process_and_link_modules_import_only_the_standard_library(name):
    path = SRC / (name.replace(".", "/") + ".py")
    found = imports(path)
    outside = sorted(m for m in found - LIGHT[name] if m.split(".")[0] not in sys.stdlib_module_names)
    assert found and outside == [], outside


def test_study_names_holds_names_only():
    """No /proc, no sockets, no UI links: those are nmfstudy.processes and nmfstudy.ui_links."""
    from nmfstudy import study_names

    assert not {"owner", "process_alive", "process_start", "ui_base", "runs_page", "run_page"} & set(vars(study_names))
    assert not {"os", "socket"} & imports(SRC / "nmfstudy" / "study_names.py")


# The tracking package is one module per concern; the study's run (one class) is the longest.
LONGEST_TRACKING_MODULE = {"study": 420}


def test_no_tracking_module_grows_past_300_lines():
    lengths = {p.stem: len(p.read_text().splitlines()) for p in (SRC / "nmfstudy" / "tracking").glob("*.py")}
    too_long = {name: n for name, n in lengths.items() if n > LONGEST_TRACKING_MODULE.get(name, 300)}
    assert len(lengths) >= 7 and lengths["__init__"] < 100 and too_long == {}, too_long


def test_no_module_switches_the_matplotlib_backend():
    offenders = [str(p) for p in SRC.rglob("*.py") if "matplotlib.use(" in p.read_text()]
    assert offenders == []


def test_the_library_imports_no_application_module():
    """nmfstudy.nmf and nmfstudy.methods know nothing of configs, Hydra, MLflow or Optuna."""
    graph = {name: imports(p) for p in SRC.rglob("*.py")
             if (name := module_name(p)).startswith(("nmfstudy.nmf", "nmfstudy.methods", "nmfstudy.params"))}
    forbidden = ("hydra", "omegaconf", "mlflow", "optuna", "nmfstudy.config", "nmfstudy.tracking")
    leaks = {name: sorted(m for m in found if m.startswith(forbidden)) for name, found in graph.items()}
    assert graph and all(not leak for leak in leaks.values()), leaks


def test_the_numerics_live_in_nmf_and_its_private_module_stays_there():
    """methods/ holds parameters and fitted attributes; solvers, starts and searches are nmf/'s (its public names)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    in_nmf = ("nmfstudy.nmf", "nmfstudy.nmf.")
    outside = sorted(name for name, p in modules.items()
                     if not (name == in_nmf[0] or name.startswith(in_nmf[1])) and "nmfstudy.nmf._common" in imports(p))
    assert outside == []
    method_modules = {name: p for name, p in modules.items()
                      if name.startswith("nmfstudy.methods.") and not name.rpartition(".")[2].startswith("_")}
    assert {"nmfstudy.methods.random_walk", "nmfstudy.methods.symnmf"} <= set(method_modules)
    linear_algebra = {name: sorted(m for m in imports(p) if m.startswith(("scipy.sparse.linalg", "scipy.linalg")))
                      for name, p in method_modules.items()}
    assert all(not found for found in linear_algebra.values()), linear_algebra
    functions = {name: [node.name for node in ast.parse(p.read_text()).body if isinstance(node, ast.FunctionDef)]
                 for name, p in method_modules.items()}
    assert all(not found for found in functions.values()), functions


@dataclass(repr=False, eq=False)
class NearestMeanClustering(ClusteringEstimator):
    """A toy method: k evenly spaced samples (by their sum) as the centroids, then nearest centroid."""

    name: ClassVar[str] = "nearest_mean_toy"
    inits: ClassVar[tuple[str, ...]] = ("spread",)
    parameters: ClassVar = {"n_rounds": [Interval(Integral, 1, 10)]}
    n_clusters: int = 8
    init: str = "spread"
    random_state: int | None = None
    n_rounds: int = 1

    def _fit(self, X, seed, callback):
        order = np.argsort(X.sum(axis=1))
        centers = X[order[np.linspace(0, len(X) - 1, self.k).astype(int)]]
        for _ in range(self.n_rounds):
            self.labels_ = ((X[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
            centers = np.stack([X[self.labels_ == j].mean(0) if (self.labels_ == j).any() else centers[j]
                                for j in range(self.k)])
        self.components_ = centers.astype(np.float32)
        self.loss_ = float(((X - centers[self.labels_]) ** 2).sum())
        self.loss_history_, self.time_history_ = np.array([self.loss_]), np.array([0.0])
        self.n_iter_ = self.n_rounds
        return 0.0

    def _predict(self, X):
        return ((X[:, None, :] - self.components_[None]) ** 2).sum(-1).argmin(1)


@pytest.fixture
def toy_method(tmp_path):
    """The toy method's config file in a search path: it names the class with _target_."""
    conf = tmp_path / "conf" / "method"
    conf.mkdir(parents=True)
    (conf / "nearest_mean_toy.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /init: spread\n\nmethod:\n  name: nearest_mean_toy\n"
        f"  _target_: {__name__}.NearestMeanClustering\n  n_clusters: ${{k}}\n  random_state: ${{seed}}\n"
        "  init: ${init.name}\n  n_rounds: 3\n")
    (tmp_path / "conf" / "init").mkdir()
    (tmp_path / "conf" / "init" / "spread.yaml").write_text("name: spread\n")
    return tmp_path / "conf"


def test_a_new_method_is_one_class_and_one_config_file(toy_method, compose):
    """Nothing in config.py, train.py or metrics.py names a method: the class's declaration and _target_ do."""
    cfg = compose("method=nearest_mean_toy", "k=3", f"hydra.searchpath=[file://{toy_method}]")
    settings.check(cfg)
    X = np.vstack([np.full((20, 4), v, np.float32) for v in (0.0, 0.5, 1.0)])
    y = np.repeat([0, 1, 2], 20)
    model = settings.build_estimator(cfg, X)
    assert isinstance(model, NearestMeanClustering) and (model.k, model.n_rounds, model.init) == (3, 3, "spread")
    scores = evaluate(model.fit(X), X, y, X, y)
    assert set(scores) == set(metric_names(has_basis=False)) and scores["accuracy"] == 1.0
    bad = compose("method=nearest_mean_toy", "method.n_rounds=11", f"hydra.searchpath=[file://{toy_method}]")
    with pytest.raises(settings.ConfigError, match=r"^method.n_rounds must be an integer in \[1, 10\], got 11$"):
        settings.check(bad)
    unknown = compose("method=nearest_mean_toy", "+method.depth=2", f"hydra.searchpath=[file://{toy_method}]")
    with pytest.raises(settings.ConfigError, match="^method.depth is not a setting of method=nearest_mean_toy$"):
        settings.check(unknown)


def test_every_method_is_exported_at_the_package_top_and_has_a_config_file():
    import nmfstudy

    conf = SRC.parent / "conf" / "method"
    targets = {path.stem: next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                               if line.strip().startswith("_target_:")) for path in conf.glob("*.yaml")}
    exported = {f"nmfstudy.methods.{cls.__name__}" for cls in methods.ESTIMATORS}
    assert set(targets.values()) == exported
    for cls in methods.ESTIMATORS:
        assert getattr(nmfstudy, cls.__name__) is cls and targets[cls.name] == f"nmfstudy.methods.{cls.__name__}"


def test_importing_the_package_or_its_names_loads_no_estimator():
    """The sweeper plugin imports nmfstudy.study_names: that must not pull in scikit-learn."""
    import subprocess
    import sys

    code = "import sys, nmfstudy.study_names; print('sklearn' in sys.modules, 'nmfstudy.methods' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
