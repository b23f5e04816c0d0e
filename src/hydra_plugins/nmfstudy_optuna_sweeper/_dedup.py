"""No fit twice, seeds as replicates, a space that ends: what a trial fits, decided before its job is launched.

A *point* is a trial's params together with the fixed settings of its command (the job's resolved
config without the keys that do not change a fit, `fit_ignores`, and without the seed); a *fit* is
a point on one seed. Each trial declares its point (user attr `fit_point`, a hash) as soon as it
is asked; before launching, it is planned against the study's trials in the storage:

- FIT: a seed of the point that no trial has finished (COMPLETE or PRUNED) nor claimed (RUNNING
  with `fit_seed`) is claimed by writing `fit_seed`, and the job fits on it;
- COPY: every seed of the point is finished: no job; the trial takes the values (the mean over
  the seeds) and, for several seeds, their spread, and records `duplicate_of`;
- WAIT: the remaining seeds are claimed by running trials, or a running trial with a lower
  number has not yet decided (it may claim the seed this one would): wait, then plan again.

The lower number decides first and never waits for a higher one, so two workers proposing one
point at once (one storage) fit it once and never wait for each other. A claim ends with its
trial: a failed fit frees its seed for the next trial of the point.

With `seeds` = N, seed i of a point is `<seed> + i` (the command's seed key, `seed_key`); a
trial's value is the mean over the point's finished seeds so far, its own included, so a point
the sampler proposes again adds its next seed, and one proposed N times has them all.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

# Trial user attrs: the trial's point; the seed its job fits on (its claim); the job's own values;
# for a trial that did not fit, the trial whose values it took; the point's seeds so far.
POINT_ATTR, FIT_SEED_ATTR, FIT_VALUES_ATTR = "fit_point", "fit_seed", "fit_values"
DUPLICATE_ATTR = "duplicate_of"
N_SEEDS_ATTR, MEAN_ATTR, STD_ATTR = "n_seeds", "seeds_mean", "seeds_std"
FIT, COPY, WAIT = "fit", "copy", "wait"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _without(config: Mapping[str, Any], dotted: str) -> dict[str, Any]:
    """`config` without the key at a dotted path (a copy of the branches on the way)."""
    head, _, rest = dotted.partition(".")
    if head not in config:
        return dict(config)
    out = dict(config)
    if rest and isinstance(out[head], Mapping):
        out[head] = _without(out[head], rest)
    elif not rest:
        del out[head]
    return out


def space_size(space: Mapping[str, Any]) -> int | None:
    """How many points a search space has; None when a dimension is continuous.

    Parameters
    ----------
    space : mapping
        Param name -> `_space.Dimension`.

    Returns
    -------
    int or None
        The product of the dimensions' sizes (1 for an empty space).
    """
    size = 1
    for dim in space.values():
        dist = dim.distribution
        if isinstance(dist, CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, IntDistribution):
            size *= (dist.high - dist.low) // dist.step + 1
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            size *= int(round((dist.high - dist.low) / dist.step)) + 1
        else:
            return None
    return size


def _in_space(params: Mapping[str, Any], space: Mapping[str, Any]) -> bool:
    if set(params) != set(space):
        return False
    for name, dim in space.items():
        dist, value = dim.distribution, params[name]
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                return False
        elif not dist.low <= value <= dist.high:
            return False
    return True


def _mean_and_spread(values: list[list[float]]) -> tuple[list[float], list[float] | None]:
    """Per objective: the mean over seeds and the sample standard deviation (None for one seed)."""
    columns = list(zip(*values, strict=True))
    mean = [statistics.fmean(column) for column in columns]
    spread = [statistics.stdev(column) for column in columns] if len(values) > 1 else None
    return mean, spread


@dataclass
class Plan:
    """What a trial does: fit on `seed`, copy `sources` (the point's finished fits), or wait."""

    action: str
    seed: int | None = None
    sources: list[FrozenTrial] = field(default_factory=list)


@dataclass
class Outcome:
    """A trial's result over its point's seeds: what it is told and what its records say."""

    state: TrialState
    values: list[float] | None
    n_seeds: int
    spread: list[float] | None
    duplicate_of: FrozenTrial | None = None

    def attrs(self) -> dict[str, Any]:
        """Trial user attrs of the seeds (for several) and of a copy."""
        attrs: dict[str, Any] = {}
        if self.n_seeds > 1:
            attrs.update({N_SEEDS_ATTR: self.n_seeds, MEAN_ATTR: self.values, STD_ATTR: self.spread})
        if self.duplicate_of is not None:
            attrs[DUPLICATE_ATTR] = self.duplicate_of.number
        return attrs

    def run_records(self, names: Sequence[str], run_id_attr: str) -> tuple[dict[str, str], dict[str, float]]:
        """Tags and metrics of the trial's run: `duplicate_of` (and its run), the seeds' mean and spread."""
        tags: dict[str, str] = {}
        metrics: dict[str, float] = {}
        if self.duplicate_of is not None:
            tags[DUPLICATE_ATTR] = str(self.duplicate_of.number)
            run = self.duplicate_of.user_attrs.get(run_id_attr)
            if run:
                tags[f"{DUPLICATE_ATTR}_run"] = str(run)
        if self.n_seeds > 1 and self.values is not None:
            metrics[N_SEEDS_ATTR] = float(self.n_seeds)
            for i, name in enumerate(names):
                metrics[f"{name}_{MEAN_ATTR}"] = self.values[i]
                if self.spread is not None:
                    metrics[f"{name}_{STD_ATTR}"] = self.spread[i]
        return tags, metrics


class Replicates:
    """A command's fits: its settings' hash, its seeds, and the plans of its trials.

    Parameters
    ----------
    job : mapping
        The job's resolved config with the command's fixed overrides (without `hydra`).
    space : mapping
        Param name -> `_space.Dimension`: the command's search space.
    seeds : int
        Seeds per point.
    seed_key : str
        The config key of the fit's seed.
    ignores : sequence of str
        Config keys (dotted) that do not change a fit's result.
    """

    def __init__(self, job: Mapping[str, Any], space: Mapping[str, Any], seeds: int, seed_key: str,
                 ignores: Sequence[str]) -> None:
        self.space, self.seeds, self.seed_key = space, seeds, seed_key
        settings: dict[str, Any] = dict(job)
        for key in (*ignores, seed_key):
            settings = _without(settings, key)
        self.settings = _hash(settings)
        base = job.get(seed_key)
        self.searched_seed = seed_key in space
        self.base = int(base) if isinstance(base, int) and not isinstance(base, bool) else 0
        self.wanted = [self.base + i for i in range(seeds)]
        self.size = space_size(space)

    def point(self, params: Mapping[str, Any]) -> str:
        """The hash of a point: params and settings."""
        return _hash({"params": dict(params), "settings": self.settings})

    def seed_override(self, overrides: list[str], seed: int | None, in_config: bool) -> list[str]:
        """A job's overrides on `seed` (the base seed needs none; a searched seed is the sampler's)."""
        if seed is None or seed == self.base or self.searched_seed:
            return overrides
        kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] != self.seed_key]
        return [*kept, f"{'' if in_config else '+'}{self.seed_key}={seed}"]

    def plan(self, trials: Sequence[FrozenTrial], number: int, point: str, patient: bool = True) -> Plan:
        """What trial `number` of `point` does, given the study's trials as the storage holds them now.

        Parameters
        ----------
        trials : sequence of FrozenTrial
            The study's trials.
        number : int
            The trial's number.
        point : str
            Its point.
        patient : bool
            Whether to wait for a running trial with a lower number that has not declared its point yet.

        Returns
        -------
        Plan
        """
        lower = [t for t in trials if t.number < number and t.state == TrialState.RUNNING]
        same = [t for t in trials if t.number != number and t.user_attrs.get(POINT_ATTR) == point]
        undecided = any(t.user_attrs.get(POINT_ATTR) == point and t.user_attrs.get(FIT_SEED_ATTR) is None
                        for t in lower)
        undeclared = patient and any(POINT_ATTR not in t.user_attrs for t in lower)
        if undecided or undeclared:
            return Plan(WAIT)
        done = self._finished_fits(same)
        claimed = {t.user_attrs.get(FIT_SEED_ATTR) for t in same if t.state == TrialState.RUNNING}
        free = [seed for seed in self.wanted if seed not in done and seed not in claimed]
        if free:
            return Plan(FIT, seed=free[0])
        if all(seed in done for seed in self.wanted):
            return Plan(COPY, sources=[done[seed] for seed in self.wanted])
        return Plan(WAIT)

    @staticmethod
    def _finished_fits(trials: Sequence[FrozenTrial]) -> dict[int, FrozenTrial]:
        """Seed -> the first finished trial that fitted it (not a copy)."""
        done: dict[int, FrozenTrial] = {}
        for trial in sorted(trials, key=lambda t: t.number):
            seed = trial.user_attrs.get(FIT_SEED_ATTR)
            if trial.state in FINISHED and trial.user_attrs.get(DUPLICATE_ATTR) is None and seed is not None:
                done.setdefault(seed, trial)
        return done

    def copied(self, sources: Sequence[FrozenTrial]) -> Outcome:
        """A copy's outcome: the mean over its point's finished seeds; PRUNED when none completed."""
        values = [list(t.user_attrs[FIT_VALUES_ATTR]) for t in sources
                  if t.state == TrialState.COMPLETE and t.user_attrs.get(FIT_VALUES_ATTR) is not None]
        last = max(sources, key=lambda t: t.number)
        if not values:
            return Outcome(TrialState.PRUNED, None, len(sources), None, duplicate_of=last)
        mean, spread = _mean_and_spread(values)
        return Outcome(TrialState.COMPLETE, mean, len(values), spread, duplicate_of=last)

    def fitted(self, trials: Sequence[FrozenTrial], number: int, point: str, seed: int,
               values: list[float]) -> Outcome:
        """A fit's outcome: its own values with those of the point's other finished seeds.

        Parameters
        ----------
        trials : sequence of FrozenTrial
            The study's trials.
        number : int
            The trial's number.
        point : str
            Its point.
        seed : int
            The seed it fitted on.
        values : list of float
            The job's values.

        Returns
        -------
        Outcome
        """
        if self.seeds == 1:
            return Outcome(TrialState.COMPLETE, values, 1, None)
        done = self._finished_fits([t for t in trials if t.number != number and t.user_attrs.get(POINT_ATTR) == point])
        others = [list(t.user_attrs[FIT_VALUES_ATTR]) for s, t in done.items()
                  if s != seed and s in self.wanted and t.state == TrialState.COMPLETE
                  and t.user_attrs.get(FIT_VALUES_ATTR) is not None]
        mean, spread = _mean_and_spread([*others, values])
        return Outcome(TrialState.COMPLETE, mean, len(others) + 1, spread)

    def complete(self, trials: Sequence[FrozenTrial]) -> bool:
        """Whether every point of a finite space has all its seeds finished (under this command's settings)."""
        if self.size is None:
            return False
        seeds: dict[str, set[int]] = {}
        for trial in trials:
            attrs = trial.user_attrs
            if (trial.state in FINISHED and attrs.get(DUPLICATE_ATTR) is None
                    and attrs.get(FIT_SEED_ATTR) in self.wanted and _in_space(trial.params, self.space)
                    and attrs.get(POINT_ATTR) == self.point(trial.params)):
                seeds.setdefault(attrs[POINT_ATTR], set()).add(attrs[FIT_SEED_ATTR])
        return sum(len(found) == self.seeds for found in seeds.values()) >= self.size



def summary(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """For the study's report: trials that fitted (a job ran to the end) and trials that took a finished fit's result.

    Parameters
    ----------
    trials : sequence of FrozenTrial
        The study's trials.

    Returns
    -------
    dict
        ``{"fits": n, "repeated": m}``.
    """
    finished = [t for t in trials if t.state in FINISHED]
    repeated = sum(t.user_attrs.get(DUPLICATE_ATTR) is not None for t in finished)
    return {"fits": len(finished) - repeated, "repeated": repeated}


def best_seeds(best: FrozenTrial, names: Sequence[str]) -> dict[str, Any]:
    """For the study's report: the best trial's seeds, their mean and spread (when it has several).

    Parameters
    ----------
    best : FrozenTrial
        The best trial.
    names : sequence of str
        The objective's metric names.

    Returns
    -------
    dict
        ``{"best_seeds": {"n_seeds": 3, "mean": {name: ...}, "std": {name: ...}}}``, or {} for one seed.
    """
    attrs = best.user_attrs
    if not attrs.get(N_SEEDS_ATTR) or attrs[N_SEEDS_ATTR] < 2:
        return {}
    spread = attrs.get(STD_ATTR) or [None] * len(names)
    return {"best_seeds": {"n_seeds": attrs[N_SEEDS_ATTR], "mean": dict(zip(names, attrs[MEAN_ATTR], strict=False)),
                           "std": dict(zip(names, spread, strict=False))}}


def latest_per_point(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Each point's trial with the most seeds (a fit rather than a repeat of it); trials of no point as they are.

    With several seeds, a point's first trial is told its first seed's value and keeps it: the
    study's best is chosen among these, so that a lucky first seed does not outrank its own mean.

    Parameters
    ----------
    trials : sequence of FrozenTrial
        Finished trials.

    Returns
    -------
    list of FrozenTrial
    """
    kept: dict[str, FrozenTrial] = {}
    others = []
    for trial in trials:
        point = trial.user_attrs.get(POINT_ATTR)
        if point is None:
            others.append(trial)
            continue

        def rank(t: FrozenTrial) -> tuple:
            return t.user_attrs.get(N_SEEDS_ATTR) or 1, t.user_attrs.get(DUPLICATE_ATTR) is None, t.number

        if point not in kept or rank(trial) > rank(kept[point]):
            kept[point] = trial
    return [*others, *kept.values()]
