"""Records -> PNG figures and one self-contained report.html; nothing here talks to MLflow but `fetch`."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from . import figures as figs
from . import html as page_html
from .html import Page
from .records import (
    Experiment,
    Fetch,
    ReportError,
    RunRecord,
    Settings,
    best_runs,
    by_data,
    components_by_k,
    group_counts,
    sparse_runs,
    studies,
)

# Artifacts an Optuna study run may carry, drawn by the sweeper; the history is drawn here when absent.
OPTUNA_FIGURES = ("optimization_history", "param_importances", "slice", "pareto_front", "intermediate_values")


@dataclass
class Report:
    """What `render` wrote.

    Parameters
    ----------
    html : pathlib.Path
        The page, report.html.
    files : list of pathlib.Path
        Every file written, report.html first, then the figures in the order written.
    """

    html: Path
    files: list[Path]


class _Folder:
    """The report's folder; remembers every file written into it, in order."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: list[Path] = []

    def save(self, figure: Figure, name: str) -> Path:
        self.files.append(figs.save(figure, self.out / name))
        return self.files[-1]

    def copy(self, source: Path, name: str) -> Path:
        target = self.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        self.files.append(target)
        return target


def render(exp: Experiment, fetch: Fetch, out: Path, settings: Settings) -> Report:
    """Write the figures and report.html of an experiment into a folder.

    Nothing here talks to MLflow but `fetch`: records made by hand and a function that
    returns local files (or None) render the same page.

    Parameters
    ----------
    exp : Experiment
        The experiment's runs and studies.
    fetch : Fetch
        fetch(run_id, artifact path) -> local file or None; asked for each best run's
        ``figures/components.png`` and each study's ``optuna/*.png``.
    out : pathlib.Path
        The folder to write into (made when missing; files of the same names are replaced).
    settings : Settings
        What runs are ranked by, the base of the run links, the reference results, the title.

    Runs fitted on different data (dataset, number of samples, data fingerprint) are never ranked
    together: each data setting gets its own sections, and its figures a folder data<i>/ when
    there are several.

    Returns
    -------
    Report
        report.html and every file written: accuracy_vs_k.png, elbow.png and fit_time.png
        when some run is complete; components/<label>_k<k>.png; sparsity.png when some run
        is a sparse variant; optuna/study<i>_<figure>.png.

    Raises
    ------
    ReportError
        When `out` cannot be made (naming report.out).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission, a read-only disk
        raise ReportError(f"report.out={out}: cannot make the folder ({err.strerror or err}); "
                          "pass report.out=FOLDER where it can be written") from None
    colors = figs.label_colors(run.label for run in exp.runs)
    groups = by_data(exp)
    parts, files = [], []
    for i, (setting, part) in enumerate(groups):
        folder = _Folder(out if len(groups) == 1 else out / f"data{i + 1}")
        parts.append((setting, _page(part, fetch, folder, settings, colors, "" if i == 0 else f"-{i + 1}")))
        files += folder.files
    html = page_html.write(out / "report.html", exp, settings, parts)
    return Report(html, [html, *files])


def _page(exp: Experiment, fetch: Fetch, folder: _Folder, settings: Settings, colors: dict[str, str],
          suffix: str) -> Page:
    """The sections of one data setting's runs, their figures saved into `folder`."""
    best = best_runs(exp.runs, settings.rank_by)
    page = Page(exp, settings, best, group_counts(exp.runs), suffix)
    if best:
        _against_k(page, folder, best, [r for r in exp.runs if r.complete(settings.rank_by)], colors, settings)
    _components(page, folder, best, fetch)
    sparse = sparse_runs(exp.runs, settings.rank_by)
    if sparse:
        page.figure("Sparsity against accuracy",
                    folder.save(figs.sparsity(sparse, settings.rank_by, colors), "sparsity.png"),
                    "Hoyer's sparseness (0: flat, 1: a single non-zero) of the basis images (sparsity_H) and of "
                    "each component's coefficients (sparsity_W), for every completed NMF run. Colour: method; "
                    "shape: k; fill: how coefficients became clusters (filled: argmax, hollow: k-means on the "
                    "coefficients), which changes the accuracy of one and the same factorization.")
    _studies(page, folder, exp, fetch)
    return page


def _against_k(page: Page, folder: _Folder, best: list[RunRecord], complete: list[RunRecord],
               colors: dict[str, str], settings: Settings) -> None:
    """Add the figures of accuracy, loss and fit time against k."""
    page.figure("Accuracy against k",
                folder.save(figs.accuracy_vs_k(best, complete, colors, settings.references), "accuracy_vs_k.png"),
                "Lines: the best run of each method and k; faint dots: its other completed runs. "
                "Stars: published results (listed below), labelled with the accuracy they report.", references=True)
    page.figure("Loss and J_clust against k (the elbow view)",
                folder.save(figs.elbow(best, complete, colors), "elbow.png"),
                "J_clust, the mean distance of a sample to its reconstruction or centroid, is comparable "
                "across methods. Loss is each method's own objective (NMF: Frobenius reconstruction error; "
                "K-means: inertia), so it is drawn relative to its value at the smallest k: compare shapes. "
                "Absolute losses are in the table.")
    page.figure("Fit time against k", folder.save(figs.fit_time(best, complete, colors), "fit_time.png"))


def _components(page: Page, folder: _Folder, best: list[RunRecord], fetch: Fetch) -> None:
    """Add the basis images or centroids (figures/components.png) of the best run of each method, by k."""
    for k, runs in components_by_k(best).items():
        row = []
        for run in runs:
            local = fetch(run.run_id, "figures/components.png")
            row.append((run, folder.copy(local, f"components/{run.label}_k{k}.png") if local else None))
        page.components(k, row)


def _studies(page: Page, folder: _Folder, exp: Experiment, fetch: Fetch) -> None:
    """Add each Optuna study: its sweeper's figures, and its optimization history drawn here when it has none."""
    for i, study in enumerate(studies(exp.study_runs, exp.runs)):
        images = {}
        for name in OPTUNA_FIGURES:
            local = fetch(study.run.run_id, f"optuna/{name}.png")
            if local:
                images[name] = folder.copy(local, f"optuna/study{i}_{name}.png")
        if "optimization_history" not in images and study.trials:
            images["optimization_history"] = folder.save(figs.optimization_history(study),
                                                         f"optuna/study{i}_history.png")
        page.study(study, images)
