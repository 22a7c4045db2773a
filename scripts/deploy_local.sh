#!/usr/bin/env bash
# A real deployment on loopback: SuperLink + SuperNodes as separate processes, TLS and
# SuperNode authentication, the fedlrs app run on them with `flwr run`, then everything stopped
# by its PID.
#
#   scripts/deploy_local.sh [WORKDIR]        (env: NODES=3 ROUNDS=3 RUN_CONFIG="..." UNKNOWN_NODE=1)
#
# Steps (each is also in docs/federation.md):
#  1. scripts/make_certificates.sh: CA, SuperLink certificate for 127.0.0.1, EC key pairs per SuperNode
#  2. flower-superlink with --ssl-* and --enable-supernode-auth
#  3. a Flower config ($FLWR_HOME/config.toml) naming the SuperLink and its CA; `flwr supernode register`
#  4. one data file per device (NPZ) and flower-supernode per device with its key, data-path and state-dir
#  5. UNKNOWN_NODE=1: one more SuperNode with a key that was never registered: it must be refused
#  6. flwr run . deploy --run-config ... --stream; the run's status from `flwr list --format json`
# Exit status 0 only when the run finished:completed (and the unknown node was refused).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d /tmp/fedlrs-deploy.XXXXXX)}
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
NODES=${NODES:-3}
ROUNDS=${ROUNDS:-3}
UNKNOWN_NODE=${UNKNOWN_NODE:-1}
RUN_CONFIG=${RUN_CONFIG:-"num-server-rounds=$ROUNDS dim=10 rank=2 sparsity=1 dataset='node' min-nodes=$NODES init='random' personalize-at-end=false private=true target-epsilon=100.0 checkpoint-dir='$WORK/checkpoint'"}
export FLWR_HOME="$WORK/flwr-home" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$FLWR_HOME" "$WORK/logs"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "stopped PIDs: ${PIDS[*]:-none}"
}
trap stop_all EXIT
free_port() { python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
wait_for() { # file pattern seconds
  for _ in $(seq 1 $(( $3 * 4 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.25; done
  echo "timed out waiting for '$2' in $1" >&2; return 1
}

# 1. certificates and keys
"$REPO/scripts/make_certificates.sh" "$WORK/certs" $(( NODES + 1 )) 127.0.0.1 >/dev/null
C="$WORK/certs"

# 2. the SuperLink (one HTTPS port for its Fleet, Control and ServerAppIO APIs)
PORT=$(free_port)
flower-superlink --ssl-ca-certfile "$C/ca.crt" --ssl-certfile "$C/server.pem" --ssl-keyfile "$C/server.key" \
  --enable-supernode-auth --host 127.0.0.1 --port "$PORT" --database "$WORK/superlink.db" \
  > "$WORK/logs/superlink.log" 2>&1 &
PIDS+=($!)
wait_for "$WORK/logs/superlink.log" "Uvicorn running on https://127.0.0.1:$PORT" 60

# 3. the Flower config of this deployment, and the SuperNodes' public keys registered
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "deploy"

[superlink.deploy]
address = "127.0.0.1:$PORT"
root-certificates = "$C/ca.crt"
TOML
for i in $(seq 1 "$NODES"); do flwr supernode register "$C/keys/supernode-$i.pub" deploy | tail -1; done

# 4. one device per SuperNode: its data file, its state directory, its key
python - "$WORK" "$NODES" <<'PY'
import sys, pathlib, numpy as np
from fedlrs.data.synthetic import make_lrs_data
work, nodes = pathlib.Path(sys.argv[1]), int(sys.argv[2])
data = make_lrs_data(users=nodes + 1, examples=15, dim=10, rank=2, sparsity=1, seed=0).train
(work / "data").mkdir(exist_ok=True)
for i in range(nodes + 1):
    np.savez(work / "data" / f"user-{i + 1}.npz", X=data.X[i].numpy(), y=data.y[i].numpy())
PY
start_supernode() { # i
  flower-supernode --root-certificates "$C/ca.crt" --superlink "127.0.0.1:$PORT" --port "$(free_port)" \
    --auth-supernode-private-key "$C/keys/supernode-$1" \
    --max-retries 3 --node-config "data-path='$WORK/data/user-$1.npz' state-dir='$WORK/state/node-$1'" \
    > "$WORK/logs/supernode-$1.log" 2>&1 &
  PIDS+=($!)
  echo $! > "$WORK/logs/supernode-$1.pid"
}
for i in $(seq 1 "$NODES"); do start_supernode "$i"; done
for i in $(seq 1 "$NODES"); do wait_for "$WORK/logs/supernode-$i.log" "SuperNode ID" 120; done

# 5. a SuperNode whose key was never registered
REFUSED=1
if [ "$UNKNOWN_NODE" = 1 ]; then
  start_supernode $(( NODES + 1 ))
  wait_for "$WORK/logs/supernode-$(( NODES + 1 )).log" "not recognized\|PERMISSION_DENIED\|Unauthenticated\|401\|403" 30 || true
  if grep -q "SuperNode ID" "$WORK/logs/supernode-$(( NODES + 1 )).log"; then REFUSED=0; fi
  echo "unknown SuperNode refused: $([ $REFUSED = 1 ] && echo yes || echo NO)"
fi

# 6. run the app on the deployment and check the run's status, not only the exit code
cd "$REPO"
flwr run . deploy --run-config "$RUN_CONFIG" --stream 2>&1 | tee "$WORK/logs/run.log" | grep --line-buffered "\[fedlrs\]" | grep -v "^[0-9]" || true
STATUS=$(flwr list deploy --format json | python -c "import json, sys; runs = json.load(sys.stdin)['runs']; print(runs[-1]['status'] if runs else 'none')")
echo "run status: $STATUS"
echo "workdir: $WORK"
[ "$STATUS" = "finished:completed" ] && [ $REFUSED = 1 ]
