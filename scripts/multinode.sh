#!/usr/bin/env bash
# Train on several machines with torchrun's c10d rendezvous. Run the same command on every node:
#
#   NNODES=2 NODE_RANK=0 MASTER=node0.example:29400 bash scripts/multinode.sh --config dtd_full   # on node 0
#   NNODES=2 NODE_RANK=1 MASTER=node0.example:29400 bash scripts/multinode.sh --config dtd_full   # on node 1
#
# NPROC_PER_NODE defaults to the number of GPUs (or 2 CPU ranks without GPUs); MAX_RESTARTS (default 3)
# lets torchrun bring every worker back after a crash; they resume from the run directory's snapshot,
# which must be on a filesystem every node sees. Extra arguments go to python -m ddpm_lib.train.
set -euo pipefail
: "${NNODES:?set NNODES, the number of machines}"
: "${NODE_RANK:?set NODE_RANK, the index of this machine, 0..NNODES-1}"
: "${MASTER:?set MASTER=host:port, where node 0 hosts the rendezvous}"
PYTHON=${PYTHON:-python}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$($PYTHON -c "import torch; print(torch.cuda.device_count() or 2)")
fi
MAX_RESTARTS=${MAX_RESTARTS:-3}

if [ "$NODE_RANK" = 0 ]; then
  port=${MASTER##*:}
  if ! $PYTHON -c "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('', $port))" 2>/dev/null; then
    echo "error: rendezvous port $port is already in use on this node; choose another port in MASTER" >&2
    exit 2
  fi
fi

exec $PYTHON -m torch.distributed.run \
  --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER" --rdzv-id="${RDZV_ID:-ddpm}" \
  --max-restarts="$MAX_RESTARTS" \
  -m ddpm_lib.train "$@"
