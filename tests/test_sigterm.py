"""SIGTERM is never swallowed: not even when it lands inside an Optuna storage call of a trial's report.

A signal handler raises wherever the main thread is. Inside SQLAlchemy and psycopg the interrupted
clean-up raises an error of its own ("can't change 'autocommit' now"), which Optuna wraps in
StorageInternalError; an ``except Exception`` around the report used to take that for a lost
storage and let the fit go on. Here a child process runs trials that report every iteration to
the real PostgreSQL and sends itself SIGTERM at a random moment of each, many times over.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
from helpers import ROOT
from optuna.trial import TrialState

SIGNALS = 60

# The child: one trial per round, reports every iteration (with a pruner: each report reads the
# study too), SIGTERM from a timer thread after 0 to 40 ms, the way train.py's handler takes it.
# The last round is not caught: the process must then end as train.py ends on SIGTERM (130).
CHILD = r"""
import json, os, random, signal, sys, threading, time
import optuna
from nmfstudy import processes
from nmfstudy.pruning import TrialReporter
from nmfstudy.processes import Terminated, raise_terminated
from nmfstudy.study_names import TrialHook

url, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
optuna.logging.set_verbosity(optuna.logging.WARNING)
signal.signal(signal.SIGTERM, raise_terminated)
study = optuna.create_study(study_name=name, storage=url)
pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 0, "n_warmup_steps": 0}
rng = random.Random(0)
result = {"honoured": 0, "swallowed": 0, "not_sent": 0}

def one_round(last):
    trial = study.ask()
    hook = TrialHook(study_name=name, number=trial.number, storage=url, trial_id=trial._trial_id,
                     report_every=1, pruner=pruner)
    reporter = TrialReporter(hook)
    reporter._open()
    timer = threading.Timer(rng.uniform(0.0, 0.04), os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        for iteration in range(1, 1000):
            reporter.report(iteration, 1.0 + 1.0 / iteration)
            if reporter._off:
                print("round", trial.number, "swallowed", file=sys.stderr)
                result["swallowed"] += 1  # the signal became a "lost storage": reports off, the fit goes on
                time.sleep(1)  # the signal is spent; nothing more will come
                break
        else:
            print("round", trial.number, "not stopped", file=sys.stderr)
            result["not_sent"] += 1
    except Terminated:
        if last:
            raise
        result["honoured"] += 1
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    finally:
        timer.cancel()
        processes._terminations.clear()  # a new round: this process did not end, as a real job would

try:
    for i in range(rounds):
        one_round(last=i == rounds - 1)
except KeyboardInterrupt:
    print(json.dumps(result))
    sys.exit(130)
print(json.dumps(result))
"""


def test_sigterm_inside_optuna_reports_is_always_honoured(study_servers, unique_name):
    url, name = study_servers.optuna_url, unique_name
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", CHILD, url, name, str(SIGNALS + 1)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result == {"honoured": SIGNALS, "swallowed": 0, "not_sent": 0}, out.stderr[-3000:]
    # the last signal ended the process as SIGTERM ends train.py
    assert out.returncode == 130, out.stderr[-3000:]
    assert "reporting to Optuna failed" not in out.stderr
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    assert len(trials) == SIGNALS + 1
    # every honoured round told its trial FAIL; the last one's process ended with its trial still RUNNING
    # (a sweeper's job fails it then), and no round reached the end of its reports
    assert [t.state for t in trials[:-1]] == [TrialState.FAIL] * SIGNALS
    assert trials[-1].state == TrialState.RUNNING
    assert all(max(t.intermediate_values, default=0) < 1000 for t in trials)
