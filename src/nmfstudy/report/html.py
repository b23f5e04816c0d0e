"""report.html: one self-contained page (CSS inline, images as data URIs, no script), readable from disk."""
from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from urllib.parse import quote

from .. import study_names as names
from .. import ui_links
from .records import DataSetting, Experiment, RunRecord, Settings, Study

# (metric, column title) of the table of best runs
COLUMNS = [("accuracy", "accuracy"), ("hungarian_accuracy", "Hungarian acc."), ("nmi", "NMI"), ("ari", "ARI"),
           ("test_accuracy", "test acc."), ("loss", "loss"), ("fit_time_s", "fit time (s)")]

# A figure in a row keeps the width it was drawn at (its fonts legible at 90 dpi) and wraps to the
# next line rather than shrinking; its caption takes the image's width instead of widening it.
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
th, td { padding: .25em .6em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
tr.bad td { color: #a33; } code { font-size: 12px; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 13px; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.row figure { flex: 0 1 auto; margin: 0; } .note { color: #555; }
.row figcaption { width: 0; min-width: 100%; }
"""


def fmt(value: float | None) -> str:
    """Format a metric for a table cell.

    Parameters
    ----------
    value : float or None
        The value; None when missing.

    Returns
    -------
    str
        Three decimals below 10 in magnitude, else four significant digits; a dash for None.
    """
    if value is None:
        return "&mdash;"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.4g}"


# What each of a study's figures shows, under it; {n}: completed trials.
STUDY_CAPTIONS = {
    "optimization_history": "The objective of each trial, and the best so far.",
    "slice": "The objective against each searched parameter; one dot per completed trial, coloured by its number.",
    "param_importances": "How much each parameter explains of the objective's spread (Optuna's default evaluator), "
                         "from {n} completed trials: with fewer than about 20 a rough guide only.",
    "pareto_front": "The trials no other trial beats on every objective (drawn by Optuna).",
    "intermediate_values": "The loss each trial reported while fitting, the basis of pruning. A maximizing study is "
                           "told -loss (larger is better for the pruner); the figure draws the loss itself.",
}


def data_uri(path: Path) -> str:
    """Embed a PNG file in the page.

    Parameters
    ----------
    path : pathlib.Path
        The PNG file.

    Returns
    -------
    str
        A ``data:image/png;base64,...`` URI.
    """
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


class Page:
    """The sections of the report, added in order, then written as one file.

    Parameters
    ----------
    exp : Experiment
        The experiment reported on.
    settings : Settings
        What runs are ranked by, the base of the run links, the reference results, the title.
    best : list of RunRecord
        The best run of each method and k, for the table of best runs.
    counts : dict of (str, int or None) to int
        The number of runs of each (label, k) (see `records.group_counts`).
    suffix : str, default=""
        Added to the ids of its tables (``best``, ``runs``), so that several pages share one file.
    """

    def __init__(self, exp: Experiment, settings: Settings, best: list[RunRecord],
                 counts: dict[tuple[str, int | None], int], suffix: str = "") -> None:
        self.exp, self.settings, self.best, self.counts, self.suffix = exp, settings, best, counts, suffix
        self.figures: list[str] = []
        self.parts: list[str] = []
        self.studies: list[str] = []

    def link(self, run: RunRecord, text: str | None = None) -> str:
        """Link to a run in the MLflow UI.

        Parameters
        ----------
        run : RunRecord
            The run.
        text : str or None, default=None
            The link's text; None for the first 8 characters of the run id.

        Returns
        -------
        str
            An ``<a>`` element, titled with the run's name.
        """
        url = ui_links.run_page(self.settings.ui_url.rstrip("/"), self.exp.id, run.run_id)
        return f'<a href="{escape(url)}" title="{escape(run.name)}"><code>{escape(text or run.run_id[:8])}</code></a>'

    def figure(self, title: str, path: Path, caption: str = "", references: bool = False) -> None:
        """Add a section with one figure.

        Parameters
        ----------
        title : str
            The section's heading, also the image's alt text.
        path : pathlib.Path
            The PNG, embedded as a data URI.
        caption : str, default=""
            The figure's caption.
        references : bool, default=False
            Whether to list the settings' reference results after the figure.
        """
        self.figures.append(f"<h2>{escape(title)}</h2><figure><img src=\"{data_uri(path)}\" alt=\"{escape(title)}\">"
                            f"<figcaption>{escape(caption)}</figcaption></figure>"
                            + (self._references() if references else ""))

    def components(self, k: int, row: list[tuple[RunRecord, Path | None]]) -> None:
        """Add one k's row of basis images and centroids to the section on parts and wholes.

        Parameters
        ----------
        k : int
            The number of components or clusters.
        row : list of (RunRecord, pathlib.Path or None)
            The best run of each method at k with its figures/components.png, or None when it
            logged none (the page says so).
        """
        cells = []
        for run, path in row:
            image = (f'<img src="{data_uri(path)}" alt="{escape(run.label)} k={k}">' if path
                     else '<p class="note">(this run logged no figures/components.png)</p>')
            cells.append(f"<figure>{image}<figcaption>{escape(run.label)}, k={k}, "
                         f"{escape(self.settings.rank_by)} {fmt(run.metric(self.settings.rank_by))}, run "
                         f"{self.link(run)}</figcaption></figure>")
        self.parts.append(f"<h3>k = {k}</h3><div class=\"row\">{''.join(cells)}</div>")

    def study(self, study: Study, images: dict[str, Path]) -> None:
        """Add an Optuna study: its counts, its best trial, its parameters and its figures.

        Parameters
        ----------
        study : Study
            The study.
        images : dict of str to pathlib.Path
            Figure name (``optimization_history``, ``slice``, ...) -> PNG, in the order drawn.
        """
        best = study.best_trial()
        logged = {key: value for key, value in study.run.metrics.items() if key.startswith("best_")}
        lines = [f"<h3>{escape(study.name)} {self.link(study.run)}</h3>",
                 f"<p>{len(study.trials)} trials ({sum(t.pruned for t in study.trials)} pruned, "
                 f"{sum(t.status != 'FINISHED' for t in study.trials)} failed or unfinished); "
                 f"objective <code>{escape(study.objective)}</code>, {study.direction}d.</p>"]
        if best is not None:
            lines.append(f"<p>Best trial: #{best.trial_number if best.trial_number is not None else '?'} "
                         f"{self.link(best)}, {escape(study.objective)} = {fmt(best.metric(study.objective))}"
                         + "".join(f"; {escape(k)} = {fmt(v)}" for k, v in sorted(logged.items())) + ".</p>")
        version = self.exp.best_models.get(study.name)
        if version is not None:
            url = f"{self.settings.ui_url.rstrip('/')}/#/models/{quote(study.name, safe='')}/versions/{version}"
            lines.append(f"<p>Best model: <code>models:/{escape(study.name)}@best</code> (version "
                         f"<a href=\"{escape(url)}\">{escape(version)}</a> in the Model Registry; load it with "
                         f"<code>mlflow.pyfunc.load_model</code>).</p>")
        params = study.best_params()  # values shown to 3 significant digits, as run names show them
        if params:
            lines.append("<table class=study><tr><th class=l>parameter</th><th class=l>search space</th>"
                         "<th class=l>best value</th></tr>" + "".join(
                             f"<tr><td class=l><code>{escape(k)}</code></td><td class=l>{escape(space)}</td>"
                             f"<td class=l>{escape(names.short_value(v))}</td></tr>"
                             for k, (space, v) in params.items()) + "</table>")
        n_complete = len(study.scored())
        lines.append("<div class=\"row\">" + "".join(
            f"<figure><img src=\"{data_uri(path)}\" alt=\"{escape(name)}\"><figcaption><b>"
            f"{escape(name.replace('_', ' '))}</b>: {escape(STUDY_CAPTIONS.get(name, '').format(n=n_complete))}"
            f"</figcaption></figure>" for name, path in images.items()) + "</div>")
        self.studies.append("".join(lines))

    def _best_table(self) -> str:
        head = "".join(f"<th>{escape(title)}</th>" for _, title in COLUMNS)
        rows = []
        for run in self.best:
            cells = "".join(f"<td>{fmt(run.metric(metric))}</td>" for metric, _ in COLUMNS)
            rows.append(f"<tr><td class=l>{escape(run.label)}</td><td>{run.k}</td>{cells}"
                        f"<td>{self.counts.get((run.label, run.k), 1)}</td><td class=l>{self.link(run)}</td></tr>")
        return (f"<table id=\"best{self.suffix}\"><tr><th class=l>method</th><th>k</th>{head}<th>runs</th>"
                "<th class=l>run</th></tr>"
                + "".join(rows) + "</table>")

    def _all_table(self) -> str:
        rows = []
        for run in sorted(self.exp.runs, key=lambda r: (r.label, r.k or 0, r.start_time)):
            state = run.status + (" (pruned)" if run.pruned else "")
            bad = ' class="bad"' if run.status != "FINISHED" else ""
            rows.append(f"<tr{bad}><td class=l>{self.link(run)}</td><td class=l>{escape(run.name)}</td>"
                        f"<td class=l>{escape(run.label)}</td><td>{run.k if run.k is not None else '?'}</td>"
                        f"<td class=l>{escape(state)}</td><td>{fmt(run.metric('accuracy'))}</td>"
                        f"<td>{fmt(run.metric('hungarian_accuracy'))}</td><td>{fmt(run.metric('fit_time_s'))}</td>"
                        f"<td class=l>{escape(run.tags.get('error', '')[:200])}</td></tr>")
        return (f"<table id=\"runs{self.suffix}\"><tr><th class=l>run</th><th class=l>name</th>"
                "<th class=l>method</th><th>k</th>"
                "<th class=l>status</th><th>accuracy</th><th>Hungarian acc.</th><th>fit time (s)</th>"
                "<th class=l>error</th></tr>" + "".join(rows) + "</table>")

    def _references(self) -> str:
        if not self.settings.references:
            return ""
        items = "".join(f"<li>{escape(r['method'])}, k={r['k']}: {escape(r['metric'])} {r['value']:.2f}"
                        f"{' (' + escape(r['source']) + ')' if r.get('source') else ''}</li>"
                        for r in self.settings.references)
        return f"<p class=note>Reference results drawn as stars:</p><ul class=note>{items}</ul>"

    def body(self) -> list[str]:
        """The page's sections: best runs, figures, parts and wholes, studies, all runs.

        Returns
        -------
        list of str
            HTML, one item per section.
        """
        rank = escape(self.settings.rank_by)
        best = (self._best_table() if self.best else
                f"<p class=note>No completed run has the metric <code>{rank}</code> yet.</p>")
        sections = [
            f"<h2>Best run per method and k</h2><p class=note>Best = highest <code>{rank}</code> among finished "
            "runs (failed, unfinished and pruned runs never count); runs = all runs of that method and k. "
            "Accuracy is majority-vote (each cluster predicts its most frequent digit; works for any k); "
            "Hungarian accuracy matches clusters to digits one to one. Run ids link to the MLflow UI.</p>" + best,
            *self.figures,
        ]
        if self.parts:
            sections.append("<h2>Parts against wholes: NMF basis images beside K-means centroids</h2>"
                            "<p class=note>figures/components.png of the best run of each method at each k.</p>"
                            + "".join(self.parts))
        if self.studies:
            sections.append("<h2>Optuna studies</h2>" + "".join(self.studies))
        sections.append(f"<h2>All runs</h2><details><summary>{len(self.exp.runs)} runs, with status and error"
                        f"</summary>{self._all_table()}</details>")
        return sections


def _demote(html: str) -> str:
    """Headings one level down (h2 -> h3, h3 -> h4), for a page nested in a data setting's section."""
    return re.sub(r"<(/?)h([23])\b", lambda m: f"<{m.group(1)}h{int(m.group(2)) + 1}", html)


def _summary(exp: Experiment, settings: Settings, parts: list[tuple[DataSetting, Page]]) -> str:
    statuses: dict[str, int] = {}
    for run in exp.runs:
        statuses[run.status] = statuses.get(run.status, 0) + 1
    commits = sorted({run.tags["git_commit"][:10] for run in exp.runs if "git_commit" in run.tags})
    url = ui_links.runs_page(settings.ui_url.rstrip("/"), exp.id)
    data = "".join(f"<li><a href=\"#data-{i + 1}\">{escape(setting.label)}</a>: {len(page.exp.runs)} runs, "
                   f"{len(page.exp.study_runs)} Optuna studies</li>" if len(parts) > 1 else
                   f"<li>{escape(setting.label)}</li>" for i, (setting, page) in enumerate(parts))
    several = (" Runs fitted on different data are never ranked together: one section per data setting."
               if len(parts) > 1 else "")
    return (f"<p>Experiment <a href=\"{escape(url)}\"><code>{escape(exp.name)}</code></a> "
            f"(id {escape(exp.id)}) in <code>{escape(exp.tracking_uri)}</code>: {len(exp.runs)} runs ("
            + ", ".join(f"{n} {escape(s.lower())}" for s, n in sorted(statuses.items()))
            + f"), {exp.n_sweeps} sweeps, {len(exp.study_runs)} Optuna studies. "
            f"Commits: {escape(', '.join(commits) or '?')}. "
            f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"
            f"<p>Data settings (dataset, training samples, data fingerprint):{several}</p><ul id=\"data\">{data}</ul>")


def write(path: Path, exp: Experiment, settings: Settings, parts: list[tuple[DataSetting, Page]]) -> Path:
    """Write the page: title, summary with the data settings, then each setting's sections.

    Parameters
    ----------
    path : pathlib.Path
        Where to write it (UTF-8).
    exp : Experiment
        The whole experiment (for the summary).
    settings : Settings
        The report's settings (title, links).
    parts : list of (DataSetting, Page)
        One page per data setting; with several, each is a section of its own.

    Returns
    -------
    pathlib.Path
        `path`.
    """
    title = settings.title or f"nmfstudy report: {exp.name}"
    sections = [f"<h1>{escape(title)}</h1>", _summary(exp, settings, parts)]
    if len(parts) == 1:
        sections += parts[0][1].body()
    else:
        for i, (setting, page) in enumerate(parts):
            sections.append(f"<section class=\"data\" id=\"data-{i + 1}\"><h2>Data: {escape(setting.label)}</h2>"
                            + "".join(_demote(part) for part in page.body()) + "</section>")
    html = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
    path.write_text(html, encoding="utf-8")
    return path
