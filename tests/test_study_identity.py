"""A study is one experiment (issue 25, item 1): its search space, objective, method and data setting
are recorded with it, and a command whose differ stops before its first trial with one line.

Through the real command line against a temporary Optuna storage and MLflow store.
"""
from __future__ import annotations

import pytest
from helpers import make_image_folder, mlflow_runs, run_train

optuna = pytest.importorskip("optuna")

# a study's identity is what these tests are about: its leading trial's figures and model (drawn, logged and
# registered, tests/test_models.py) would only add time
FAST = ["dataset=digits", "dataset.n_samples=200", "method.max_iter=10", "hydra.sweeper.n_trials=1",
        "tracking.figures=none", "tracking.model=none"]
NEW_NAME = "a study is one experiment: name a new one with hydra.sweeper.study_name=NAME"


def _study(tmp_path, *overrides):
    return run_train(tmp_path, f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db", *overrides,
                     multirun=True)


def _refused(result) -> str:
    """The sweeper's one line: exit 1, no traceback, no trial run."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = [text for text in result.stderr.splitlines() if NEW_NAME in text]
    return line


def test_a_study_refuses_another_method_search_space_or_data_before_any_trial(tmp_path):
    first = _study(tmp_path, "hparams_search=nmf_k", *FAST, "hydra.sweeper.study_name=shared")
    assert first.returncode == 0, first.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.load_study(study_name="shared", storage=storage)
    assert study.user_attrs["method"] == "nmf" and study.user_attrs["data"] == "digits-n200"
    assert study.user_attrs["search_space"] == {"k": "range(10, 51, 5)", "init": "choice(random, nndsvd, nndsvda, "
                                                                                  "nndsvdar)"}
    runs_before = {r.info.run_id for r in mlflow_runs(tmp_path)}
    where = f"study 'shared' in {storage}"
    # another method (the NMFR, then DCD: here NMF, then K-means)
    line = _refused(_study(tmp_path, "hparams_search=kmeans_k", *FAST, "hydra.sweeper.study_name=shared"))
    assert line.endswith(f"{where} was made for method=nmf, not method=kmeans: {NEW_NAME}")
    # the same method, another search space
    line = _refused(_study(tmp_path, "hparams_search=nmf_sparse", *FAST, "hydra.sweeper.study_name=shared"))
    assert line.endswith(f"{where} searches k, init; this command also searches sparsity.alpha_W, sparsity.alpha_H, "
                         f"sparsity.l1_ratio: {NEW_NAME}")
    # the same preset on other data
    line = _refused(_study(tmp_path, "hparams_search=nmf_k", *FAST, "dataset.n_samples=300",
                           "hydra.sweeper.study_name=shared"))
    assert line.endswith(f"{where} was made on data digits-n200, not digits-n300: {NEW_NAME}")
    # nothing was asked or logged by the refused commands
    assert len(optuna.load_study(study_name="shared", storage=storage).get_trials()) == 1
    assert {r.info.run_id for r in mlflow_runs(tmp_path)} == runs_before
    # the same experiment resumes, a searched key fixed too (trials inside the space)
    again = _study(tmp_path, "hparams_search=nmf_k", *FAST, "k=10", "hydra.sweeper.study_name=shared")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="shared", storage=storage).get_trials()) == 2


def test_the_default_study_name_tells_image_folders_and_sizes_apart(tmp_path):
    cats = make_image_folder(tmp_path / "cats", shape=(8, 8), n_per_label=4)
    dogs = make_image_folder(tmp_path / "dogs", shape=(8, 8), n_per_label=4)
    common = ["hparams_search=kmeans_k", "dataset=images", "k=2", "hydra.sweeper.n_trials=1", "tracking.figures=none",
              "tracking.model=none", f"dataset.cache_dir={tmp_path / 'cache'}"]
    for overrides in ([f"dataset.dir={cats}"], [f"dataset.dir={dogs}"],
                      [f"dataset.dir={dogs}", "dataset.image_size=6"]):
        result = _study(tmp_path, *common, *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")
    assert sorted(names) == ["kmeans_k-images-cats", "kmeans_k-images-dogs", "kmeans_k-images-dogs-6x6"]


@pytest.mark.parametrize("override, line", [
    ("hydra.sweeper.n_trials=-1", "hydra.sweeper.n_trials must be >= 0; got -1"),
    ("hydra.sweeper.max_failure_rate=2", "hydra.sweeper.max_failure_rate must be in [0, 1]; got 2.0"),
    ("hydra.sweeper.grace_period=10", "hydra.sweeper.grace_period must be > heartbeat_interval (60), or null (twice "
                                      "it); got 10"),
])
def test_a_sweeper_setting_out_of_range_is_one_line_naming_its_key(tmp_path, override, line):
    result = _study(tmp_path, "hparams_search=nmf_k", override)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert line in result.stderr.splitlines()
    assert "SweeperError" not in result.stderr and "Error in call to target" not in result.stderr
    assert not (tmp_path / "optuna.db").exists() and not mlflow_runs(tmp_path)


def test_a_dropped_key_is_refused_unless_fixed_and_data_labels_name_what_makes_data_distinct():
    from hydra_plugins.nmfstudy_optuna_sweeper import _identity
    from hydra_plugins.nmfstudy_optuna_sweeper._space import parse_search_space
    from nmfstudy.study_names import data_label

    study = optuna.create_study(study_name="s")
    both, _ = parse_search_space({"k": "range(2, 5)", "init": "choice(random, nndsvd)"})
    _identity.check(study, "memory", both, [], {"method": "nmf", "data": "digits"})
    assert study.user_attrs == {"search_space": {"k": "range(2, 5)", "init": "choice(random, nndsvd)"},
                                "method": "nmf", "data": "digits"}
    only_k, _ = parse_search_space({"k": "range(2, 5)"})
    _identity.check(study, "memory", only_k, ["init=random"], {"method": "nmf", "data": "digits"})  # fixed: inside
    with pytest.raises(ValueError) as err:
        _identity.check(study, "memory", only_k, [], {"method": "nmf", "data": "digits"})
    assert str(err.value) == ("study 's' in memory searches k, init; this command neither searches nor fixes init: "
                              f"search or fix it, or {NEW_NAME}")
    assert [data_label(d) for d in ({"name": "mnist_5k", "dir": None, "n_samples": None},
                                    {"name": "mnist", "dir": "../shared/data/mnist/"},
                                    {"name": "mnist", "dir": "~/fashion"},
                                    {"name": "images", "dir": "/data/cats", "image_size": [20, 24], "n_samples": 50},
                                    {"name": "images", "dir": "cats", "image_size": 28, "n_samples": "null"})] == [
        "mnist_5k", "mnist", "mnist-fashion", "images-cats-20x24-n50", "images-cats-28x28"]
