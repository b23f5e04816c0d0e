"""How a refinement's clusters change over its iterations, on all 63,000 MNIST images: accuracy against iteration.

Not a test. Fits one method as `bench_clustering.py` does (its config composed as `python src/train.py` composes
it, plus the overrides given, the graph read from the cache), records after every iteration of the refinement on
the samples its objective, how many samples changed cluster, and every 10 iterations the majority-vote accuracy
(the hook is LabelStability.settled, which the refinement calls once per iteration), then prints one line per
50 iterations and writes every record as JSON:

    python bench/bench_trajectory.py dcd 0 50 bench/trajectory_dcd_k50_seed0.json method.exact_restarts=1

Arguments: method, seed, k, the output file, then config overrides.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(method: str, seed: int, k: int, out: str, overrides: list[str]) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(2)
    from bench_clustering import DATA, compose

    from nmfstudy import config as settings
    from nmfstudy.data import load_dataset
    from nmfstudy.metrics import majority_accuracy
    from nmfstudy.nmf import _common

    cfg = compose(method, k, seed, overrides)
    data = load_dataset("mnist", dir=str(DATA), deskew=cfg["dataset"]["deskew"])
    X, y = np.concatenate([data.X_train, data.X_test]), np.concatenate([data.y_train, data.y_test])
    model = settings.build_estimator(cfg, X).set_params(cache_dir=str(HERE.parent / ".cache" / "graphs"))
    records, settled, t0 = [], _common.LabelStability.settled, time.perf_counter()

    def recorded(self, W, loss):
        stop = settled(self, W, loss)
        if len(W) == len(y):  # the refinement on the samples, not on a coarse graph
            it = len(self._losses) - 1
            records.append({"iteration": it, "loss": loss, "changes": self._changes[-1] if self._changes else 0,
                            "seconds": time.perf_counter() - t0,
                            "majority": majority_accuracy(y, W.argmax(axis=1), k) if it % 10 == 0 else None})
        return stop

    _common.LabelStability.settled = recorded
    model.fit(X)
    print(f"{method} k={k} seed={seed} {' '.join(overrides)}: fit {time.perf_counter() - t0:.1f} s, "
          f"{model.n_iter_} iterations, majority {majority_accuracy(y, model.labels_, k):.4f}")
    changes = [r["changes"] for r in records]
    print("iteration  seconds  objective  majority  changes over the last 20")
    for r in records:
        if r["iteration"] % 50 == 0 or r is records[-1]:
            i = r["iteration"]
            maj = f"{r['majority']:.4f}" if r["majority"] is not None else "-"
            print(f"{i:9d}  {r['seconds']:7.1f}  {r['loss']:.6g}  {maj:>8}  {sum(changes[max(0, i - 19):i + 1])}")
    Path(out).write_text(json.dumps(records))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:])
