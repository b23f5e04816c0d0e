"""The Optuna sweeper (hydra/sweeper=optuna) and the job's trial hook (nmfstudy.pruning).

Unit tests of the search-space grammar, the presets and the reporter run in-process. The rest runs
the real command line against temporary stores and checks what Optuna and MLflow hold:
- `study`: one study on digits, then the same command again (resume) with two parallel joblib jobs;
- a multi-objective K-means study; an interrupted study (both slow).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CONF, ROOT, artifact_paths, default_sigint, mlflow_runs, run_train

optuna = pytest.importorskip("optuna")
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.nmfstudy_optuna_sweeper._space import SearchSpaceError, parse_search_space, render  # noqa: E402
from nmfstudy.pruning import TrialReporter  # noqa: E402
from nmfstudy.study_names import TrialHook  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

PRESETS = tuple(sorted(path.stem for path in (CONF / "hparams_search").glob("*.yaml")))
STUDY = "nmf_k-digits"


# --- search space grammar ---------------------------------------------------------------

def test_grammar_maps_to_optuna_distributions():
    space, fixed = parse_search_space({
        "k": "range(10, 51, 5)",
        "init": "choice(random, nndsvd)",
        "sparsity.alpha_W": "tag(log, interval(1e-5, 1e-2))",
        "sparsity.l1_ratio": "interval(0, 1)",
        "sparsity.s_W": "null,0.2,0.4",
        "method.n_init": "int(interval(1, 10))",
        "method.max_iter": "tag(log, int(interval(8, 512)))",
        "method.tol": "range(0.1, 0.5, 0.1)",
        "seed": "shuffle(range(3))",
        "method.solver": "hals",
    })
    d = {name: dim.distribution for name, dim in space.items()}
    assert d["k"] == IntDistribution(10, 50, step=5)  # Hydra's range excludes its stop
    assert d["init"] == CategoricalDistribution(["random", "nndsvd"])
    assert d["sparsity.alpha_W"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert d["sparsity.l1_ratio"] == FloatDistribution(0.0, 1.0)
    assert d["sparsity.s_W"] == CategoricalDistribution(["null", 0.2, 0.4])
    assert d["method.n_init"] == IntDistribution(1, 10)
    assert d["method.max_iter"] == IntDistribution(8, 512, log=True)
    assert d["method.tol"].step == pytest.approx(0.1) and d["method.tol"].high == pytest.approx(0.4)
    assert d["seed"] == CategoricalDistribution([0, 1, 2])  # sorted: a resumed study needs the same choices
    assert fixed == ["method.solver=hals"]
    # values go back as overrides Hydra reads as the same value (null stays null, not 'None')
    assert space["sparsity.s_W"].override("null") == "sparsity.s_W=null"
    assert space["sparsity.alpha_W"].override(1.5e-05) == "sparsity.alpha_W=1.5e-05"
    assert space["k"].override(25) == "k=25"
    assert space["sparsity.alpha_W"].text == "tag(log, interval(1e-5, 1e-2))"


def test_command_line_replaces_params_and_adds_dimensions():
    space, fixed = parse_search_space({"k": "range(10, 51, 5)", "init": "choice(random, nndsvd)"},
                                      ["k=choice(3,5)", "init=nndsvda", "+foo=1,2", "dataset=digits"])
    assert space["k"].distribution == CategoricalDistribution([3, 5])
    assert "init" not in space and "init=nndsvda" in fixed and "dataset=digits" in fixed
    assert space["foo"].override(2) == "+foo=2"


@pytest.mark.parametrize("line, message", [
    ("range(5, 5)", "empty"),
    ("tag(log, interval(0, 1))", "positive"),
    ("tag(log, range(1, 9))", "log scale"),
])
def test_unsearchable_params_name_their_key(line, message):
    with pytest.raises(SearchSpaceError, match=message) as err:
        parse_search_space({"k": line})
    assert str(err.value).startswith("k:")


def test_render_round_trips_through_hydras_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = {"study_name": "it's a \\ study", "storage": "sqlite:////tmp/a b/optuna.db", "number": 3,
             "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 20}, "lower": -1.5e-05,
             "none": None, "flag": True, "list": [1, "x"]}
    (override,) = OverridesParser.create().parse_overrides([f"trial={render(value)}"])
    assert override.value() == value


def test_presets_compose_and_their_trials_pass_the_config_checks():
    """Every preset selects our sweeper wired to nmfstudy, parses, and sampled trials compose into valid configs."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_method, instantiate
    from omegaconf import OmegaConf

    from nmfstudy import config as settings
    from nmfstudy.tracking.study import StudyTracker

    # every preset in conf/hparams_search/, whatever methods have one (a new method may add its own)
    assert {"gnmf", "kmeans_k", "nmf_hoyer", "nmf_k", "nmf_sparse", "symnmf"} <= set(PRESETS)
    for preset in PRESETS:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose("config", overrides=[f"hparams_search={preset}"], return_hydra_config=True)
            sweeper = cfg.hydra.sweeper
            assert sweeper._target_.endswith("nmfstudy_optuna_sweeper.optuna_sweeper.OptunaSweeper")
            assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
            assert sweeper.pruner is None and sweeper.storage is None and 5 <= sweeper.n_trials <= 20
            assert sweeper.study_name.startswith(f"{preset}-mnist_5k") and sweeper.root is None
            assert cfg.objective in ("accuracy", "hungarian_accuracy")
            # the application reaches the plugin through these keys only
            assert get_method(sweeper.check) is settings.check
            assert get_method(sweeper.open_storage).__module__ == "nmfstudy.pruning"
            tracker = instantiate(OmegaConf.to_container(sweeper.tracker, resolve=True))
            assert isinstance(tracker, StudyTracker) and tracker.experiment == cfg.tracking.experiment
            space, fixed = parse_search_space(OmegaConf.to_container(sweeper.params))
            assert len(space) >= 2 and not fixed
            for _ in range(3):
                trial = study.ask({name: dim.distribution for name, dim in space.items()})
                overrides = [dim.override(trial.params[name]) for name, dim in space.items()]
                run = compose("config", overrides=[f"hparams_search={preset}", *overrides])
                settings.check(OmegaConf.to_container(run, resolve=True))
                study.tell(trial, 0.0)


def test_a_changed_choice_on_resume_is_refused_before_any_trial():
    from hydra_plugins.nmfstudy_optuna_sweeper._impl import OptunaSweeperImpl

    study = optuna.create_study()
    study.enqueue_trial({"k": 3})
    trial = study.ask({"k": CategoricalDistribution([0, 3, 8])})
    study.tell(trial, 1.0)
    space, _ = parse_search_space({"k": "choice(8,12)", "j": "range(1, 5)"})
    with pytest.raises(ValueError, match=r"hydra.sweeper.params.k=choice\(8,12\) does not fit study 's'"):
        OptunaSweeperImpl._check_space("s", study.get_trials(), space)
    OptunaSweeperImpl._check_space("s", study.get_trials(), parse_search_space({"k": "0,3,8"})[0])


def test_a_queued_retry_is_not_taken_for_its_dead_workers_trial_before_its_new_worker_claims_it():
    """Optuna's retry copies the failed trial's user attrs; popped, the copy must not be failed as the dead worker's."""
    from hydra_plugins.nmfstudy_optuna_sweeper._impl import (
        HOST_ATTR,
        PID_ATTR,
        WORKER_TRIAL_ATTR,
        OptunaSweeperImpl,
    )

    gone = subprocess.Popen(["true"])
    gone.wait()
    sweeper = OptunaSweeperImpl.__new__(OptunaSweeperImpl)
    sweeper.host, sweeper.pid = "this-host", os.getpid()
    study = optuna.create_study()
    first = study.ask()
    for key, value in {HOST_ATTR: "this-host", PID_ATTR: gone.pid, WORKER_TRIAL_ATTR: first.number}.items():
        first.set_user_attr(key, value)
    claimed = study.get_trials(states=(TrialState.RUNNING,))[0]
    assert sweeper._worker_gone(claimed)
    study.tell(first, state=TrialState.FAIL)
    optuna.storages.RetryFailedTrialCallback()(study, study.trials[0])
    retry = study.ask()  # pops the queued copy, the dead worker's attrs with it
    popped = study.get_trials(states=(TrialState.RUNNING,))[0]
    assert popped.number == retry.number != first.number and popped.user_attrs[PID_ATTR] == gone.pid
    assert not sweeper._worker_gone(popped)
    retry.set_user_attr(WORKER_TRIAL_ATTR, retry.number)  # its worker claimed it, then died too
    assert sweeper._worker_gone(study.get_trials(states=(TrialState.RUNNING,))[0])
    legacy = study.ask()  # a trial of a study begun before the attr: host and pid alone
    legacy.set_user_attr(HOST_ATTR, "this-host")
    legacy.set_user_attr(PID_ATTR, gone.pid)
    assert sweeper._worker_gone(study.trials[legacy.number])
    legacy.set_user_attr(PID_ATTR, os.getppid())  # alive
    assert not sweeper._worker_gone(study.trials[legacy.number])
    legacy.set_user_attr(HOST_ATTR, "elsewhere")
    legacy.set_user_attr(PID_ATTR, gone.pid)
    assert not sweeper._worker_gone(study.trials[legacy.number])


def test_job_returns_become_trial_states():
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.nmfstudy_optuna_sweeper._impl import OptunaSweeperImpl

    def job(status, value):
        ret = JobReturn()
        ret.status, ret._return_value = status, value
        return ret

    outcome = OptunaSweeperImpl._outcome
    assert outcome(job(JobStatus.COMPLETED, 0.5), 1) == (TrialState.COMPLETE, [0.5], None)
    assert outcome(job(JobStatus.COMPLETED, [0.5, 3]), 2) == (TrialState.COMPLETE, [0.5, 3.0], None)
    assert outcome(job(JobStatus.FAILED, optuna.TrialPruned("at 20")), 1) == (TrialState.PRUNED, None, None)
    state, _, error = outcome(job(JobStatus.FAILED, ValueError("k must be")), 1)
    assert state == TrialState.FAIL and str(error) == "k must be"
    for value, n in ((float("nan"), 1), ([0.5], 2), ("text", 1)):
        state, _, error = outcome(job(JobStatus.COMPLETED, value), n)
        assert state == TrialState.FAIL and "finite number" in str(error)


# --- the job's reporter ---------------------------------------------------------------------

def test_trial_hook_round_trips_through_the_override_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hook = TrialHook("nmf_k-digits", 7, storage="sqlite:////tmp/o.db", trial_id=12, run_id="abc", report_every=5,
                     pruner={"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 20})
    (override,) = OverridesParser.create().parse_overrides([f"trial={render(hook.to_config())}"])
    assert TrialHook.from_config(override.value()) == hook
    assert override.value()["id"] == 12  # the config key the docs name
    with pytest.raises(ValueError, match="trial needs number"):
        TrialHook.from_config({"study_name": "s"})


def _reporter_study(tmp_path, direction, pruner=None):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction=direction, pruner=pruner)
    return url, study


def _stored(url: str, number: int):
    """The trial as the storage holds it now (Optuna's public API)."""
    return optuna.load_study(study_name="s", storage=url).get_trials()[number]


@pytest.mark.parametrize("direction, sign", [("maximize", -1.0), ("minimize", 1.0)])
def test_reporter_reports_the_loss_oriented_to_the_study_and_prunes(tmp_path, direction, sign):
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 0}
    url, study = _reporter_study(tmp_path, direction)
    first = study.ask()
    for step in (10, 20):
        first.report(sign * 100.0 / step, step)  # a fit whose loss goes 10, 5
    study.tell(first, 0.5)
    trial = study.ask()
    storage = optuna.storages.RDBStorage(url)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), trial.number)
    assert TrialHook.from_config(None) is None
    reporter = TrialReporter(TrialHook.from_config({"study_name": "s", "storage": url, "number": trial.number,
                                                    "id": trial_id, "report_every": 10, "pruner": pruner}))
    calls = []
    callback = reporter.wrap(lambda *args: calls.append(args))
    assert reporter.tags() == {"optuna.study_name": "s", "optuna.trial_number": "1"}
    assert not any(callback(it, 8.0, 0.1) for it in range(1, 11))  # better than the median at 10
    assert callback(20, 50.0, 0.2) is True  # worse at 20: pruned, the fit stops
    assert len(calls) == 11 and reporter.pruned
    assert reporter.tags()["optuna.state"] == "PRUNED" and reporter.tags()["optuna.pruned_at_iteration"] == "20"
    assert isinstance(reporter.pruned_exception(), optuna.TrialPruned)
    assert _stored(url, trial.number).intermediate_values == {10: sign * 8.0, 20: sign * 50.0}


def test_reporter_without_pruner_only_reports_and_multi_objective_reports_nothing(tmp_path):
    url, study = _reporter_study(tmp_path, "maximize")
    trial = study.ask()
    reporter = TrialReporter(TrialHook("s", 0, storage=url, report_every=5))  # the trial found by its number
    assert not any(reporter.wrap()(it, 100.0 - it, 0.0) for it in range(1, 31))
    assert sorted(_stored(url, trial.number).intermediate_values) == [5, 10, 15, 20, 25, 30]
    multi = optuna.create_study(study_name="m", storage=url, directions=["maximize", "minimize"])
    multi.ask()
    reporter = TrialReporter(TrialHook("m", 0, storage=url, report_every=1))
    assert reporter.wrap()(1, 5.0, 0.0) is None and not reporter.pruned


def test_a_trial_beats_the_finished_trials_only_when_none_is_better(tmp_path):
    url, study = _reporter_study(tmp_path, "maximize")
    study.tell(study.ask(), 0.5)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # failed trials do not count
    reporter = TrialReporter(TrialHook("s", 2, storage=url))
    assert [reporter.beats_finished_trials(value) for value in (0.4, 0.5, 0.6)] == [False, True, True]
    low = optuna.create_study(study_name="low", storage=url, direction="minimize")
    low.tell(low.ask(), 0.5)
    reporter = TrialReporter(TrialHook("low", 1, storage=url))
    assert [reporter.beats_finished_trials(value) for value in (0.4, 0.6)] == [True, False]
    multi = optuna.create_study(study_name="m", storage=url, directions=["maximize", "minimize"])
    multi.tell(multi.ask(), [0.5, 10.0])
    reporter = TrialReporter(TrialHook("m", 1, storage=url))
    assert reporter.beats_finished_trials([0.4, 5.0])  # better on the second: on the front so far
    assert not reporter.beats_finished_trials([0.4, 10.0])  # dominated
    assert TrialReporter(TrialHook("s", 0)).beats_finished_trials(0.0)  # in memory: cannot tell, draws


# --- the real command line ------------------------------------------------------------------

def _sweep(tmp: Path, *overrides: str, timeout: int = 400) -> subprocess.CompletedProcess:
    result = run_train(tmp, "hparams_search=nmf_k", "dataset=digits", f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
                       *overrides, multirun=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_a_studys_trials_draw_figures_only_when_they_beat_the_finished_ones(tmp_path):
    """tracking.figures=final (the default): the best trial has its figures, a trial worse than one
    finished before it has none; tracking.figures=none draws nothing, in a plain run too."""
    _sweep(tmp_path, "k=choice(2,9,3,10)", "hydra/sweeper/sampler=bruteforce", "hydra.sweeper.n_trials=4",
           "dataset.n_samples=300", "method.max_iter=20", "tracking.figures=final")
    trials = {t.number: t for t in _trials(tmp_path, "nmf_k-digits-n300")}
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in mlflow_runs(tmp_path)
            if "optuna.trial_number" in r.data.tags}
    assert sorted(runs) == [0, 1, 2, 3]
    drew = {n: "figures/components.png" in artifact_paths(tmp_path, runs[n]) for n in runs}
    record = [trials[n].value > max([trials[m].value for m in range(n)] or [-1]) for n in range(4)]
    assert drew == dict(enumerate(record)) and record[0] and not all(record)
    best = max(trials.values(), key=lambda t: t.value).number
    assert drew[best]
    (tmp_path / "plain").mkdir()
    plain = run_train(tmp_path / "plain", "dataset=digits", "dataset.n_samples=300", "tracking.figures=none")
    assert plain.returncode == 0, plain.stderr[-2000:]
    (run,) = mlflow_runs(tmp_path / "plain")
    assert artifact_paths(tmp_path / "plain", run) == set() and run.info.status == "FINISHED"


def _trials(tmp: Path, name: str = STUDY):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db").get_trials()


def _client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """nmf_k on digits over k in {0, 3, 8, 12}, each once (brute force): k=0 fails the config check;
    a threshold pruner stops the fits whose loss exceeds 60 at iteration 5 (k=3); then the same
    command again, with k fixed at 8 on two seeds, adds 2 trials (one point, its two seeds: no fit
    repeated), run in parallel by the joblib launcher."""
    tmp = tmp_path_factory.mktemp("optuna")
    common = ["method.tol=0", "method.max_iter=30", "init=nndsvda", "hydra.sweeper.report_every=5",
              "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:-60.0}"]
    first = _sweep(tmp, "k=choice(0,3,8,12)", "hydra/sweeper/sampler=bruteforce", "hydra.sweeper.n_trials=6",
                   *common)
    after_first = _trials(tmp)
    first_parent = _study_run_id(tmp)
    second = _sweep(tmp, "k=8", "hydra.sweeper.n_trials=2", "hydra.sweeper.seeds=2", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", *common)
    return {"tmp": tmp, "first": first, "second": second, "after_first": after_first,
            "first_parent": first_parent, "second_parent": _study_run_id(tmp)}


def _study_run_id(tmp: Path, name: str = STUDY) -> str:
    """The study's MLflow run, as the sweeper records it with the study."""
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db").user_attrs["mlflow_run_id"]


def test_study_fails_and_prunes_trials_and_goes_on(study):
    trials = study["after_first"]
    by_k = {t.params["k"]: t for t in trials}
    # the sampler covered the space, so the sweep stopped at 4 of the 6 trials asked for
    assert sorted(by_k) == [0, 3, 8, 12] and [t.number for t in trials] == [0, 1, 2, 3]
    assert by_k[0].state == TrialState.FAIL and "k must be an integer >= 1" in by_k[0].user_attrs["error"]
    assert by_k[3].state == TrialState.PRUNED and by_k[3].last_step == 5
    assert by_k[3].value == by_k[3].intermediate_values[5] < -60  # -loss: the study maximizes
    for k in (8, 12):
        assert by_k[k].state == TrialState.COMPLETE and 0 < by_k[k].value <= 1
        assert sorted(by_k[k].intermediate_values) == [5, 10, 15, 20, 25, 30]
    assert "Error executing job" not in study["first"].stderr  # a pruned trial is no error


def test_study_is_logged_to_the_parent_run_with_its_trials_nested(study):
    tmp, parent_id = study["tmp"], study["first_parent"]
    client = _client(tmp)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["nmfstudy.kind"] == "study" and parent.data.tags["optuna.study_name"] == STUDY
    params, metrics, tags = parent.data.params, parent.data.metrics, parent.data.tags
    assert params["optuna.space.k"] == "choice(0,3,8,12)" and params["optuna.direction"] == "maximize"
    assert params["optuna.sampler"].startswith("optuna.samplers.BruteForceSampler(seed=0")
    assert params["optuna.pruner"].startswith("optuna.pruners.ThresholdPruner(lower=-60.0")
    # the whole study, after the resume too: 6 trials, the 2 new ones COMPLETE
    trials = _trials(tmp)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert tags["best.trial_number"] == str(best.number)
    assert metrics["best_accuracy"] == pytest.approx(best.value)
    assert (metrics["trials_complete"], metrics["trials_pruned"], metrics["trials_fail"]) == (4, 1, 1)
    plots = {a.path for a in client.list_artifacts(parent_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/slice.png", "optuna/intermediate_values.png"} <= plots
    children = [r for r in mlflow_runs(tmp) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    # every trial has exactly one run, made when the trial started, k=0 too (FAILED at the config check)
    states = {int(r.data.tags["optuna.trial_number"]): r.data.tags["optuna.state"] for r in children}
    by_number = {t.number: t for t in trials}
    assert states == {n: t.state.name for n, t in by_number.items()} and len(children) == len(trials)
    for run in children:
        trial = by_number[int(run.data.tags["optuna.trial_number"])]
        assert run.info.status == ("FAILED" if trial.state == TrialState.FAIL else "FINISHED")
        assert run.data.tags["optuna.study_name"] == STUDY
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    (failed,) = [r for r in children if r.info.status == "FAILED"]
    assert "k must be an integer >= 1" in failed.data.tags["error"]
    pruned = [r for r in children if r.data.tags["optuna.state"] == "PRUNED"]
    assert len(pruned) == 1 and pruned[0].data.tags["optuna.pruned_at_iteration"] == "5"
    assert pruned[0].data.metrics["n_iter"] == 5


def test_resume_adds_parallel_trials_with_continuing_numbers_and_folders(study):
    tmp = study["tmp"]
    trials = _trials(tmp)
    assert [t.number for t in trials] == list(range(6))  # none lost, none duplicated
    assert all(t.state != TrialState.RUNNING for t in trials)
    new = trials[4:]
    assert all(t.state == TrialState.COMPLETE and t.params == {} for t in new)  # k=8 fixed: nothing searched
    assert "Joblib.Parallel(n_jobs=2" in study["second"].stdout + study["second"].stderr
    # hydra.job.num is the trial number: the resumed study's folders follow the first one's
    for number in range(6):
        assert (tmp / "multirun" / str(number) / ".hydra" / "overrides.yaml").is_file()
    overrides = (tmp / "multirun" / "5" / ".hydra" / "overrides.yaml").read_text()
    assert "number:5" in overrides
    # one study, one MLflow run: the resume nests its trials under the first command's study run
    assert study["second_parent"] == study["first_parent"]
    children = [r for r in mlflow_runs(tmp) if r.data.tags.get("mlflow.parentRunId") == study["first_parent"]]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    # each trial's sampler is seeded with seed + its number: a resume does not replay the start
    assert [t.user_attrs["sampler_seed"] for t in trials] == list(range(6))


@pytest.mark.slow
def test_multi_objective_kmeans_study_logs_a_pareto_front(tmp_path):
    result = run_train(tmp_path, "hparams_search=kmeans_k", "dataset=digits", "k=choice(5,10,15)",
                       "method.n_init=1", "objective=[accuracy,fit_time_s]",
                       "hydra.sweeper.direction=[maximize,minimize]", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
                       multirun=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _trials(tmp_path, "kmeans_k-digits")
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    (parent,) = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("nmfstudy.kind") == "study"]
    assert {"best_accuracy", "best_fit_time_s", "pareto_front_size"} <= set(parent.data.metrics)
    assert parent.data.params["optuna.direction"] == "maximize,minimize" and "best.k" in parent.data.tags
    plots = {a.path for a in _client(tmp_path).list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/pareto_front.png", "optuna/optimization_history.png", "optuna/param_importances.png",
            "optuna/slice.png"} <= plots


@pytest.mark.slow
def test_interrupt_marks_the_running_trial_failed_and_keeps_the_others(study):
    """Ctrl-C in a resumed study: earlier trials stay, the running one is FAIL, no MLflow run RUNNING."""
    tmp = study["tmp"]
    before = {t.number: t.state for t in _trials(tmp)}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(
        [sys.executable, "src/train.py", "-m", "hparams_search=nmf_k", "dataset=digits", "k=8", "init=nndsvda",
         f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
         f"hydra.sweep.dir={tmp}/multirun", "hydra.sweeper.n_trials=3", "method.tol=0", "method.max_iter=1000000"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # until the new trial's fit has reported an iteration
            time.sleep(1)
            running = [t for t in _trials(tmp) if t.state == TrialState.RUNNING and t.intermediate_values]
            if running:
                break
        assert running, "the new trial never started its fit"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0, output[-2000:]
    after = _trials(tmp)
    assert {t.number: t.state for t in after if t.number in before} == before
    (interrupted,) = [t for t in after if t.number not in before]
    assert interrupted.state == TrialState.FAIL and "KeyboardInterrupt" in interrupted.user_attrs["error"]
    runs = mlflow_runs(tmp)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (killed,) = [r for r in runs if r.data.tags.get("optuna.trial_number") == str(interrupted.number)]
    assert killed.info.status == "KILLED"


def test_storage_calls_go_on_through_a_commit_that_the_outage_broke_and_not_through_bad_data(monkeypatch):
    """Optuna turns a driver's error in its commit (PostgreSQL shutting down) into StorageInternalError: retried,
    as the driver's own error is; a StorageInternalError of anything else is raised at once."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError

    from hydra_plugins.nmfstudy_optuna_sweeper import _storage

    monkeypatch.setattr(_storage.time, "sleep", lambda s: None)
    calls = []

    def commit_during_a_restart():
        calls.append("commit")
        if len(calls) < 3:
            try:
                raise OperationalError("COMMIT", {}, Exception("the database system is shutting down"))
            except OperationalError as err:
                raise StorageInternalError("An exception is raised during the commit.") from err
        return "stored"

    assert _storage.retrying("recording the trial's worker", commit_during_a_restart) == "stored"
    assert calls == ["commit"] * 3

    def too_long():
        calls.append("too long")
        raise StorageInternalError("exceeding max length")

    with pytest.raises(StorageInternalError, match="max length"):
        _storage.retrying("recording the trial's worker", too_long)
    assert calls.count("too long") == 1


def test_a_query_that_ctrl_c_cut_short_no_longer_locks_the_sqlite_study_once_released(tmp_path):
    """Ctrl-C inside an in-process job's query: SQLAlchemy closes the connection, but SQLite keeps it, and its
    shared lock, while the query's cursor lives on in the interrupt's frames; the sweeper's write that tells the
    trial FAIL then waited on it (60 s a try: a Ctrl-C that hung a study, about 1 in 18 tries). Released, the
    write goes through."""
    import sqlite3

    from hydra_plugins.nmfstudy_optuna_sweeper._storage import release_interrupted

    db = str(tmp_path / "study.db")
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])

    def job_query():
        connection = sqlite3.connect(db)
        cursor = connection.execute("SELECT x FROM t")
        cursor.fetchone()  # the query under way, as the interrupt found it
        try:
            raise KeyboardInterrupt
        finally:
            connection.close()  # what SQLAlchemy does with a connection that an exit exception interrupted

    with pytest.raises(KeyboardInterrupt) as interrupted:
        job_query()
    writer = sqlite3.connect(db, timeout=0.1)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"), writer:
        writer.execute("INSERT INTO t VALUES (4)")
    release_interrupted(interrupted.value)
    with writer:
        writer.execute("INSERT INTO t VALUES (4)")
    assert writer.execute("SELECT count(*) FROM t").fetchone() == (4,)
    writer.close()
