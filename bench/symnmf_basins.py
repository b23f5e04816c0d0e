"""Where SymNMF's local minima lie on full MNIST: the loss and accuracy of each start, run to convergence.

Not a test, and a diagnostic only: the labels pick nothing here, they only score what each start
reaches. On the 60,000 training images (10-NN binary graph on PCA 50, the graph of
bench/bench_clustering.py, read from its cache), k=10, each start runs `--iters` iterations
(no early stop), from:

- `--random` uniform random starts (Kuang et al.'s, seeds 1000, 1001, ...);
- the multilevel starts of `method=symnmf` (seeds 0, 1, ...);
- the true partition (`nmfstudy.nmf.graph_nmf.partition_start` of the labels): never a method,
  it shows where the objective puts the right answer.

    python bench/symnmf_basins.py --random 20 --multilevel 4 --out bench/symnmf_basins.md
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "graphs")
    p.add_argument("--seed", type=int, default=0, help="the graph's (PCA) seed")
    p.add_argument("--random", type=int, default=20)
    p.add_argument("--multilevel", type=int, default=4)
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)

    from machine import machine_summary

    from nmfstudy.data import load_dataset
    from nmfstudy.metrics import hungarian_accuracy
    from nmfstudy.nmf.graph import cached_knn_graph
    from nmfstudy.nmf.graph_nmf import normalize_graph, partition_start, symnmf
    from nmfstudy.nmf.multilevel import multilevel_start, smooth_embedding

    load0 = os.getloadavg()
    data = load_dataset("mnist", dir=str(a.data))
    X, y = data.X_train, data.y_train
    S = cached_knn_graph(X, data.fingerprint, a.cache, n_neighbors=10, weight="binary", pca=50, seed=a.seed)
    A = normalize_graph(S)
    U = smooth_embedding(A, 30, seed=a.seed)
    starts = [("random", 1000 + i, None) for i in range(a.random)]
    starts += [("multilevel", i, multilevel_start(A, U, 10, 5, 50, i)) for i in range(a.multilevel)]
    starts.append(("true partition (diagnostic)", None, partition_start(A, y, 10)))
    rows = []
    for kind, seed, H in starts:
        t0 = time.process_time()
        res = symnmf(S, 10, seed=seed or 0, max_iter=a.iters, tol=0.0, starts=None if H is None else [H])
        L = res.loss_history
        rows.append((res.loss, kind, seed, L[min(49, len(L) - 1)], hungarian_accuracy(y, res.labels, 10),
                     time.process_time() - t0))
        print(f"{kind:<28} {seed!s:>5} loss@50 {rows[-1][3]:.6f} loss@{a.iters} {res.loss:.6f} "
              f"hungarian {rows[-1][4]:.4f}", flush=True)
    load1 = os.getloadavg()
    table = ["| start | seed | loss after 50 it | loss after {} it | Hungarian |".format(a.iters),
             "|---|---|---|---|---|"]
    for loss, kind, seed, l50, hung, _ in sorted(rows, key=lambda r: r[0]):
        table.append(f"| {kind} | {'' if seed is None else seed} | {l50:.6f} | {loss:.6f} | {hung:.4f} |")
    report = (f"## SymNMF's local minima on MNIST (60,000 training images, k=10, graph seed {a.seed})\n\n"
              f"{machine_summary()}\n\nCommand: `python {shlex.join(sys.argv)}`\n\n"
              f"Load average before {load0[0]:.1f}, after {load1[0]:.1f}. Each start ran {a.iters} iterations "
              "(anls, no early stop); rows sorted by final loss ||A - HH^T||_F (lower is better for SymNMF).\n\n"
              + "\n".join(table) + "\n")
    print("\n" + report)
    if a.out:
        a.out.write_text(report)


if __name__ == "__main__":
    main()
