#!/usr/bin/env bash
# The same sweep on every engine: in-process, joblib, submitit_local, a tracking server,
# submitit_local + the server. Prints each engine's exit status, wall time and test
# accuracies (they should agree), then how many engines' `pipeline.compare` chose each winner.
# Needs real MNIST in data/processed (run `dvc repro` first).
# Usage: benchmarks/engines.sh [sweep preset, default: optimizers]
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-optimizers}
PY=.venv/bin/python
WORK=$(mktemp -d)
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVER_URI=http://127.0.0.1:$PORT
test -f data/processed/train.npz || { echo "no data/processed: run dvc repro first" >&2; exit 1; }

mkdir -p "$WORK/server"
.venv/bin/mlflow server --backend-store-uri "sqlite:///$WORK/server/mlflow.db" \
    --artifacts-destination "$WORK/server/artifacts" --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "$SERVER_URI/health" >/dev/null && break; sleep 1; done

engine() {
    local name=$1; shift
    mkdir -p "$WORK/$name/data" && ln -s "$PWD/data/processed" "$WORK/$name/data/processed"
    local start end rc=0
    start=$(date +%s.%N)
    $PY -m pipeline.experiment -m "sweep=$PRESET" "paths.root=$WORK/$name" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    $PY -m pipeline.compare "paths.root=$WORK/$name" "$@" >"$WORK/$name.compare.log" 2>&1 || rc=$?
    $PY - "$name" "$rc" "$start" "$end" "$WORK/$name/reports/sweep/runs.csv" <<'PYEOF'
import csv, sys
name, rc, start, end, table = sys.argv[1:]
rows = sorted(csv.DictReader(open(table)), key=lambda r: r["run_name"]) if rc == "0" else []
accuracies = " ".join(f"{r['run_name']}={float(r['test_accuracy']):.4f}" for r in rows)
print(f"{name:16} exit {rc}  wall {float(end) - float(start):6.1f} s  {accuracies}")
PYEOF
}

engine in-process
engine joblib hydra/launcher=joblib hydra.launcher.n_jobs=2
engine submitit_local hydra/launcher=submitit_local
engine server tracking=server "tracking.uri=$SERVER_URI" tracking.experiment=in-process
engine server+submitit hydra/launcher=submitit_local tracking=server "tracking.uri=$SERVER_URI" tracking.experiment=submitit
grep -ho "Chosen on validation: [^ ]*" "$WORK"/*.compare.log | sort | uniq -c || echo "no compare chose a winner"
echo "logs and stores: $WORK"
