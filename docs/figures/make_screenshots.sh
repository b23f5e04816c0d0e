#!/usr/bin/env bash
# Remakes docs/figures/mlflow_ui_runs.png and mlflow_ui_artifacts.png: a small sweep on digits in a
# temporary store, the real `mlflow ui` on it, and headless Chromium on the links the sweep printed.
# Run from the project root: bash docs/figures/make_screenshots.sh
set -euo pipefail
tmp=$(mktemp -d)
port=5077
python src/train.py -m dataset=digits method=nmf,kmeans k=10,20 hydra.sweep.dir="$tmp/multirun" \
  tracking.uri="sqlite:///$tmp/mlflow.db" > "$tmp/sweep.log" 2>&1
line=$(grep "sweep run " "$tmp/sweep.log")
runs=$(grep -o "all runs: http://127.0.0.1:5000/[^ ]*" <<< "$line" | sed "s|all runs: http://127.0.0.1:5000|http://127.0.0.1:$port|")
best=$(grep -o "best [^(]*(http://127.0.0.1:5000/[^)]*)" <<< "$line" | grep -o "/#/[^)]*")
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false python -m mlflow ui --backend-store-uri "sqlite:///$tmp/mlflow.db" \
  --host 127.0.0.1 --port $port > "$tmp/ui.log" 2>&1 &
ui=$!
trap 'kill $ui; rm -rf "$tmp"' EXIT
until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 1; done
shot() { chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
  --user-data-dir="$tmp/profile" --virtual-time-budget=20000 --window-size=1400,800 --screenshot="$2" "$1"; }
shot "$runs" docs/figures/mlflow_ui_runs.png
shot "http://127.0.0.1:$port${best/\?//artifacts/figures/components.png?}" docs/figures/mlflow_ui_artifacts.png
