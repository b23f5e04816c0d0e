"""Studies that spend every trial on something new (issue 27): no fit twice, seeds as replicates, a space
that ends, degenerate fits as constraints.

The plans of trials are checked in-process against a real Optuna storage (two workers' trials are
trials of one SQLite study); the rest runs the real command line (K-means on digits) and counts the
fits by what the jobs leave: an MLflow run with the fit's metrics and a job folder.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from helpers import mlflow_runs, run_train

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.nmfstudy_optuna_sweeper import _dedup  # noqa: E402
from hydra_plugins.nmfstudy_optuna_sweeper._impl import best_trial  # noqa: E402
from hydra_plugins.nmfstudy_optuna_sweeper._space import parse_search_space  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

KMEANS = ["hparams_search=kmeans_k", "dataset=digits", "init=kmeans++", "method.n_init=1", "k=choice(10,15)"]


# --- plans, against a real storage -----------------------------------------------------------------

def _replicates(seeds: int = 1, **job) -> _dedup.Replicates:
    space, _ = parse_search_space({"k": "choice(10,15)"})
    return _dedup.Replicates({"seed": 0, "method": {"max_iter": 50}, "tracking": {"uri": "a"}, **job}, space,
                             seeds, "seed", ["tracking"])


def _asked(study, replicates, k: int):
    """A trial proposing k, which says its point as the sweeper's do."""
    study.enqueue_trial({"k": k})
    trial = study.ask()
    assert trial.suggest_categorical("k", [10, 15]) == k
    trial.set_user_attr(_dedup.POINT_ATTR, replicates.point(trial.params))
    return trial


def _claim(trial, plan) -> None:
    assert plan.action == _dedup.FIT
    trial.set_user_attr(_dedup.FIT_SEED_ATTR, plan.seed)


def _done(study, trial, value: float) -> None:
    trial.set_user_attr(_dedup.FIT_VALUES_ATTR, [value])
    study.tell(trial, value)


def test_a_point_is_its_params_and_settings_without_what_does_not_change_a_fit():
    base = _replicates()
    assert base.point({"k": 10}) == _replicates(tracking={"uri": "elsewhere"}).point({"k": 10})
    assert base.point({"k": 10}) == _replicates(seed=0).point({"k": 10})
    assert base.point({"k": 10}) != base.point({"k": 15})
    assert base.point({"k": 10}) != _replicates(method={"max_iter": 60}).point({"k": 10})
    assert _replicates(seeds=3, seed=7).wanted == [7, 8, 9]
    assert base.size == 2 and _dedup.space_size(parse_search_space({"x": "interval(0, 1)"})[0]) is None
    assert _dedup.space_size(parse_search_space({"k": "range(10, 51, 5)", "i": "a,b,c,d", "n": "1,3,10"})[0]) == 108


def test_two_workers_proposing_one_point_fit_it_once(tmp_path):
    """Trials 0 and 1 (two workers) propose k=10 at once: 0 fits, 1 waits, then takes 0's result;
    a fit that fails frees its seed for the next trial of the point."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", direction="maximize")
    replicates = _replicates()
    first, second = _asked(study, replicates, 10), _asked(study, replicates, 10)
    point = replicates.point({"k": 10})
    # the higher number waits while the lower has not decided, and while it fits
    assert replicates.plan(study.get_trials(), second.number, point).action == _dedup.WAIT
    plan = replicates.plan(study.get_trials(), first.number, point)
    _claim(first, plan)
    assert plan.seed == 0
    assert replicates.plan(study.get_trials(), second.number, point).action == _dedup.WAIT
    _done(study, first, 0.8)
    plan = replicates.plan(study.get_trials(), second.number, point)
    assert plan.action == _dedup.COPY and [t.number for t in plan.sources] == [first.number]
    outcome = replicates.copied(plan.sources)
    assert outcome.values == [0.8] and outcome.duplicate_of.number == first.number
    assert outcome.attrs() == {"duplicate_of": first.number}
    # a failed fit claims nothing: the next trial of its point fits
    other = _asked(study, replicates, 15)
    _claim(other, replicates.plan(study.get_trials(), other.number, replicates.point({"k": 15})))
    study.tell(other, state=TrialState.FAIL)
    late = _asked(study, replicates, 15)
    assert replicates.plan(study.get_trials(), late.number, replicates.point({"k": 15})).action == _dedup.FIT


def test_a_running_trial_that_has_not_said_its_point_is_waited_for_only_while_patient(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db")
    replicates = _replicates()
    study.ask()  # asked, its params not yet suggested: it may be this point
    trial = _asked(study, replicates, 10)
    point = replicates.point({"k": 10})
    assert replicates.plan(study.get_trials(), trial.number, point).action == _dedup.WAIT
    assert replicates.plan(study.get_trials(), trial.number, point, patient=False).action == _dedup.FIT


def test_seeds_are_claimed_in_turn_and_the_value_is_their_mean(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", direction="maximize")
    replicates = _replicates(seeds=3)
    point = replicates.point({"k": 10})
    trials = [_asked(study, replicates, 10) for _ in range(4)]
    seeds = []
    for trial in trials[:3]:
        plan = replicates.plan(study.get_trials(), trial.number, point)
        _claim(trial, plan)
        seeds.append(plan.seed)
    assert seeds == [0, 1, 2]
    assert replicates.plan(study.get_trials(), trials[3].number, point).action == _dedup.WAIT
    values = [0.9, 0.5, 0.4]  # a lucky first seed
    for trial, seed, value in zip(trials[:3], seeds, values, strict=True):
        outcome = replicates.fitted(study.get_trials(), trial.number, point, seed, [value])
        trial.set_user_attr(_dedup.FIT_VALUES_ATTR, [value])
        for key, attr in outcome.attrs().items():
            trial.set_user_attr(key, attr)
        study.tell(trial, outcome.values[0])
    assert [t.value for t in study.trials[:3]] == [0.9, pytest.approx(0.7), pytest.approx(0.6)]
    plan = replicates.plan(study.get_trials(), trials[3].number, point)
    assert plan.action == _dedup.COPY and len(plan.sources) == 3
    outcome = replicates.copied(plan.sources)
    assert outcome.values == [pytest.approx(0.6)] and outcome.spread == [pytest.approx(statistics.stdev(values))]
    assert outcome.n_seeds == 3 and outcome.duplicate_of.number == 2
    assert not replicates.complete(study.get_trials())  # k=15 has no seed yet
    # the best is judged on a point's mean over its seeds, not on its first seed's value
    other = _asked(study, replicates, 15)
    other.set_user_attr(_dedup.FIT_SEED_ATTR, 0)
    study.tell(other, 0.65)
    assert study.best_trial.number == 0  # Optuna's: the first seed's 0.9
    assert best_trial(study).number == other.number


# --- the real command line -------------------------------------------------------------------------

def _study(tmp: Path, name: str = "kmeans_k-digits"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db")


def _enqueue(tmp: Path, *params: dict, name: str = "kmeans_k-digits") -> None:
    """Proposals made in advance: the sweeper's asks pop them first, in order."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db", direction="maximize")
    for p in params:
        study.enqueue_trial(p)


def _kmeans(tmp: Path, *overrides: str):
    result = run_train(tmp, *KMEANS, f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db", *overrides,
                       multirun=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _fits(tmp: Path) -> dict[int, object]:
    """Trial number -> the MLflow run of a job that fitted (it logged the fit's time)."""
    return {int(r.data.tags["optuna.trial_number"]): r for r in mlflow_runs(tmp)
            if "optuna.trial_number" in r.data.tags and "fit_time_s" in r.data.metrics}


def test_a_repeated_proposal_makes_no_fit_and_takes_the_result_of_the_first(tmp_path):
    _enqueue(tmp_path, {"k": 10}, {"k": 10})
    _kmeans(tmp_path, "hydra.sweeper.n_trials=2")
    first, again = _study(tmp_path).get_trials()
    assert first.state == again.state == TrialState.COMPLETE and first.params == again.params == {"k": 10}
    assert again.values == first.values and again.user_attrs["duplicate_of"] == first.number == 0
    assert first.user_attrs["fit_seed"] == 0 and first.user_attrs["fit_values"] == first.values
    assert again.constraints == first.constraints == {"dead_components": 0.0, "unused_clusters": 0.0}
    assert list(_fits(tmp_path)) == [0]  # one fit
    assert not (tmp_path / "multirun" / "1").exists()  # no job for the repeat
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in mlflow_runs(tmp_path)
            if "optuna.trial_number" in r.data.tags}
    assert runs[1].info.status == "FINISHED" and runs[1].data.metrics == {}
    assert runs[1].data.tags["duplicate_of"] == "0" and runs[1].data.tags["duplicate_of_run"] == runs[0].info.run_id
    assert runs[1].data.tags["optuna.state"] == "COMPLETE"


def test_seeds_replicate_a_point_and_its_value_is_their_mean(tmp_path):
    """seeds=3, k=10 proposed four times: three fits on seeds 0, 1, 2, then a repeat of the mean."""
    _enqueue(tmp_path, *[{"k": 10}] * 4)
    result = _kmeans(tmp_path, "hydra.sweeper.n_trials=4", "hydra.sweeper.seeds=3")
    trials = _study(tmp_path).get_trials()
    fits = _fits(tmp_path)
    assert sorted(fits) == [0, 1, 2]
    assert sorted(r.data.params["seed"] for r in fits.values()) == ["0", "1", "2"]
    own = [trials[n].user_attrs["fit_values"][0] for n in range(3)]
    assert own == [fits[n].data.metrics["accuracy"] for n in range(3)]
    assert [trials[n].user_attrs["fit_seed"] for n in range(3)] == [0, 1, 2]
    assert trials[0].value == own[0]
    assert trials[1].value == pytest.approx(statistics.fmean(own[:2]))
    assert trials[2].value == pytest.approx(statistics.fmean(own))
    assert trials[2].user_attrs["seeds_std"] == [pytest.approx(statistics.stdev(own))]
    assert trials[2].user_attrs["n_seeds"] == 3
    assert trials[3].user_attrs["duplicate_of"] == 2 and trials[3].value == pytest.approx(trials[2].value)
    assert fits[2].data.metrics["accuracy_seeds_mean"] == pytest.approx(trials[2].value)
    assert fits[2].data.metrics["accuracy_seeds_std"] == pytest.approx(statistics.stdev(own))
    (report,) = (tmp_path / "multirun").glob("optimization_results.yaml")
    text = report.read_text()
    assert "best_seeds:" in text and "n_seeds: 3" in text and "fits: 3" in text and "repeated: 1" in text
    assert "(mean of 3 seeds, std {accuracy: " in result.stdout + result.stderr


def test_a_finite_space_ends_when_every_point_has_its_seeds(tmp_path):
    """Brute force over two points on two seeds: four fits, then one line, asked for ten; again: nothing."""
    result = _kmeans(tmp_path, "hydra/sweeper/sampler=bruteforce", "hydra.sweeper.seeds=2", "hydra.sweeper.n_trials=10")
    trials = _study(tmp_path).get_trials()
    fitted = {(t.params["k"], t.user_attrs["fit_seed"]) for t in trials if t.user_attrs.get("duplicate_of") is None}
    assert fitted == {(10, 0), (10, 1), (15, 0), (15, 1)} and len(_fits(tmp_path)) == 4
    assert len(trials) < 10
    line = "every point of the search space (2) has its 2 seed(s): nothing new to fit"
    assert line in result.stdout + result.stderr
    again = _kmeans(tmp_path, "hydra/sweeper/sampler=bruteforce", "hydra.sweeper.seeds=2", "hydra.sweeper.n_trials=10")
    assert line in again.stdout + again.stderr and len(_study(tmp_path).get_trials()) == len(trials)


def test_a_degenerate_fit_is_a_constraint_violation_the_sampler_reads(tmp_path):
    """nmf_sparse on digits minimizing n_live_components (so that the degenerate fit has the best value):
    at alpha_W=0.1, l1_ratio=1 nearly every component dies. Its trial carries Optuna's constraint values, which
    TPE and NSGA-II read from every finished trial, and the study's best is the feasible trial."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    result = run_train(tmp_path, "hparams_search=nmf_sparse", f"hydra.sweeper.storage={storage}", "dataset=digits",
                       "method.max_iter=50", "k=3", "sparsity.alpha_H=0.01", "sparsity.alpha_W=choice(0.0,0.1)",
                       "sparsity.l1_ratio=1.0", "objective=n_live_components", "hydra.sweeper.direction=minimize",
                       "hydra/sweeper/sampler=bruteforce", "hydra.sweeper.n_trials=2",
                       multirun=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="nmf_sparse-digits", storage=storage)
    by_alpha = {t.params["sparsity.alpha_W"]: t for t in study.get_trials()}
    runs = {r.data.params["sparsity.alpha_W"]: r.data.metrics for r in mlflow_runs(tmp_path)
            if "fit_time_s" in r.data.metrics}
    for alpha, trial in by_alpha.items():
        metrics = runs[str(alpha)]
        assert trial.constraints == {"dead_components": 3.0 - metrics["n_live_components"],
                                     "unused_clusters": 3.0 - metrics["n_clusters_used"]}
    dead, live = by_alpha[0.1], by_alpha[0.0]
    assert dead.value < live.value == 3.0  # the degenerate fit has the better value ...
    assert dead.constraints["dead_components"] == 3.0 - dead.value > 0  # ... and violates
    assert max(live.constraints.values()) <= 0
    assert study.best_trial.number == live.number  # Optuna's constrained optimization: the best feasible trial
    (report,) = (tmp_path / "multirun").glob("optimization_results.yaml")
    assert f"best_trial: {live.number}" in report.read_text()


@pytest.mark.slow
def test_two_workers_on_postgresql_proposing_one_point_fit_it_once(tmp_path, study_servers, unique_name):
    """Two workers started at once on one PostgreSQL study, each popping a proposal of k=10: one fit."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import preloaded
    from helpers import ROOT, run_env

    servers = study_servers
    study = optuna.create_study(study_name=unique_name, storage=servers.optuna_url, direction="maximize")
    for _ in range(2):
        study.enqueue_trial({"k": 10})
    argv = [[sys.executable, "src/train.py", "-m", *KMEANS, f"hydra.sweeper.storage={servers.optuna_url}",
             f"hydra.sweeper.study_name={unique_name}", f"tracking.uri={servers.mlflow_url}",
             f"tracking.experiment={unique_name}", f"hydra.sweep.dir={tmp_path}/multirun/{i}",
             "hydra.sweeper.n_trials=1", "tracking.model=none"] for i in range(2)]
    with ThreadPoolExecutor(2) as pool:  # both at once, each in a child of the preloaded interpreter
        workers = list(pool.map(lambda args: preloaded.run_script(args, ROOT, run_env(), 400), argv))
    outputs = [w.stdout + w.stderr for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    first, again = optuna.load_study(study_name=unique_name, storage=servers.optuna_url).get_trials()
    assert first.state == again.state == TrialState.COMPLETE, (first.user_attrs, again.user_attrs, outputs)
    assert again.values == first.values and again.user_attrs["duplicate_of"] == first.number
    from mlflow.tracking import MlflowClient

    client = MlflowClient(servers.mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name(unique_name).experiment_id])
    fits = [r for r in runs if "fit_time_s" in r.data.metrics]
    assert [r.data.tags["optuna.trial_number"] for r in fits] == [str(first.number)]
