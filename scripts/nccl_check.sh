#!/usr/bin/env bash
# The one-GPU NCCL check (issue 51, point 3), for a lent GPU machine: every training stage under
# `selftrain-torchrun --standalone --nproc-per-node 1` on CUDA, so that DDP, the log's reduction, the checkpoint's
# gather, FreeMatch's threshold sync and MPL's h go through real NCCL. Then a teacher killed mid-run is resumed.
# On the tiny params of the test suite: a few minutes. Prints one line per check and exits 1 at the first failure.
#
#   scripts/nccl_check.sh [WORK]          # WORK: where the runs go (default: runs/nccl-check)
#   DEVICE=cpu scripts/nccl_check.sh      # the same path on the CPU through Gloo: checks this script, not NCCL
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/nccl-check}
export PATH="$PWD/.venv/bin:$PATH"
rm -rf "$WORK" && mkdir -p "$WORK"
python - "$WORK/params.yaml" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import write_tiny_params
write_tiny_params(Path(sys.argv[1]))
EOF
DEVICE=${DEVICE:-cuda}
BACKEND=$([ "$DEVICE" = cuda ] && echo nccl || echo gloo)
P=(--params "$WORK/params.yaml" --set "runtime.device=$DEVICE")
RUN=(selftrain-torchrun --standalone --nproc-per-node 1 -m selftrain.cli)
check() { echo "== $1"; shift; "$@" > "$WORK/last.log" 2>&1 || { tail -40 "$WORK/last.log"; echo "FAILED"; exit 1; }; }

if [ "$DEVICE" = cuda ]; then
  python -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(0))'
fi
check "prepare" selftrain prepare "${P[@]}" --out "$WORK/data"
check "teacher under $BACKEND" "${RUN[@]}" train-teacher "${P[@]}" --data "$WORK/data" --out "$WORK/teacher" \
  --promoted "$WORK/gen0.json"
grep -q "process group $BACKEND, 1 process(es)" "$WORK/last.log" || { echo "FAILED: no $BACKEND group"; exit 1; }
check "infer" selftrain infer "${P[@]}" --teacher "$WORK/gen0.json" --data "$WORK/data" --out "$WORK/logits"
check "filter-balance" selftrain filter-balance "${P[@]}" --logits-store "$WORK/logits" --data "$WORK/data" \
  --out "$WORK/pseudo"
check "noisy student under $BACKEND" "${RUN[@]}" train-student "${P[@]}" --generation gen1 --data "$WORK/data" \
  --teacher "$WORK/gen0.json" --pseudo "$WORK/pseudo" --out "$WORK/student"
check "FixMatch + FreeMatch + DA under $BACKEND" "${RUN[@]}" train-student "${P[@]}" --generation gen1 \
  --set generations.gen1.method=fixmatch --set methods.fixmatch.threshold=freematch \
  --set methods.fixmatch.dist_align=true --data "$WORK/data" --teacher "$WORK/gen0.json" --out "$WORK/fixmatch"
check "MPL under $BACKEND" "${RUN[@]}" train-mpl "${P[@]}" --generation gen2 --data "$WORK/data" \
  --teacher "$WORK/gen0.json" --out "$WORK/mpl"

echo "== a teacher killed mid-run, then resumed"
LONG=(--set teacher.epochs=40 --set runtime.checkpoint_every=20)
"${RUN[@]}" train-teacher "${P[@]}" "${LONG[@]}" --data "$WORK/data" --out "$WORK/killed" \
  --promoted "$WORK/killed.json" > "$WORK/killed.log" 2>&1 &
pid=$!
for _ in $(seq 600); do grep -q "checkpoint at step" "$WORK/killed.log" && break; sleep 0.2; done
kill -9 "$pid" 2>/dev/null || true
pkill -9 -f "$WORK/killed" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
check "resume" "${RUN[@]}" train-teacher "${P[@]}" "${LONG[@]}" --data "$WORK/data" --out "$WORK/killed" \
  --promoted "$WORK/killed.json"
grep -q "resuming from the checkpoint" "$WORK/last.log" || { echo "FAILED: the rerun did not resume"; exit 1; }
echo "all checks passed through $BACKEND ($WORK)"
