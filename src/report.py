"""Turn one MLflow experiment into pictures and tables: report.html plus its PNG figures.

    python src/report.py tracking.experiment=nmfstudy
    python src/report.py tracking.experiment=mnist tracking.uri=http://host:5000 report.out=/tmp/mnist

Writes report.out (default reports/<experiment> under the project root) and logs the same
files as a run of kind `report` in the experiment (report.log_run=false to skip).
"""
from __future__ import annotations

import gc

# off while MLflow and matplotlib load, then their objects frozen out of its reach (why: src/train.py)
gc.disable()

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nmfstudy import report, tracking
from nmfstudy.hydra_callbacks import command_line, project_root
from nmfstudy.versions import git_commit

gc.freeze()
gc.enable()

log = logging.getLogger("nmfstudy")


class UserError(CompactHydraException):
    """Nothing to report on, or a bad setting: Hydra prints its one line, without a traceback."""


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    """Build the report of ``tracking.experiment`` and log it as a run of kind ``report``.

    Parameters
    ----------
    cfg : DictConfig
        The report's config (conf/report.yaml plus command-line overrides).
    """
    # Downloads of single figures need no progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    conf = OmegaConf.to_container(cfg, resolve=True)
    opts, experiment, root = conf["report"], conf["tracking"]["experiment"], project_root()
    out = Path(opts["out"]).expanduser()
    out = out if out.is_absolute() else root / out
    references = opts.get("references") or []
    bad = [r for r in references if r.get("metric") not in ("accuracy", "hungarian_accuracy")
           or not {"method", "k", "value"} <= set(r)]
    try:
        if bad:
            raise report.ReportError(f"report.references: each needs method, k, value and metric accuracy or "
                                     f"hungarian_accuracy; got {bad[0]}")
        store = tracking.resolve_store(conf["tracking"]["uri"], root)
        if store.tracking_uri.startswith("sqlite:///") and not Path(store.tracking_uri[len("sqlite:///"):]).exists():
            # Opening a missing SQLite store would create an empty one.
            raise report.ReportError(f"tracking.experiment={experiment!r}: no MLflow store at {store.tracking_uri} "
                                     "(tracking.uri); run train.py first")
        client = tracking.open_store(store)
        # A run whose process was killed is reported as what it is (KILLED), not as running.
        tracking.end_dead_runs_in(client, experiment, conf["tracking"].get("grace_period"))
        settings = report.Settings(rank_by=opts["rank_by"], ui_url=report.ui_base(opts["ui_url"], store.tracking_uri),
                                   references=references, title=opts["title"])
        result = report.build(client, store, experiment, out, settings)
    except (report.ReportError, tracking.TrackingError) as err:
        if HydraConfig.get().mode == RunMode.RUN:  # as train.py: one line, no Hydra preamble
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        raise UserError(str(err)) from None  # in a multirun over experiments, Hydra reports it
    log.info("wrote %s (%d figures)", result.html, len(result.files) - 1)
    if opts["log_run"]:
        run_id = report.log_report_run(client, store, experiment, result, out,
                                       {"command": command_line(), "git_commit": git_commit(root)})
        log.info("logged as run %s of experiment %r", run_id, experiment)


if __name__ == "__main__":
    main()
