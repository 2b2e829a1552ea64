#!/usr/bin/env bash
# The H200 runs of docs/experiments/log.md ("On one H200: the chain past the 2-core budget"), as one script for a GPU machine:
# three seeds of the Noisy Student chain side by side (4 DataLoader workers each), every generation scored, and
# beside them seed 0's methods at equal wall clock. Results and logs go to OUT (at most 8 files).
#   WHEELS=dir  install these wheels first into /tmp/site (a machine without the project's pydantic/s3fs/timm)
#   FMNIST=dir  the four Fashion-MNIST .gz files, where no known place has them
#   PYTHON=path the interpreter with torch (default python3)
#   T=seconds   stop every run after this long (what a run finished is saved as it ends)
#   WORK=dir    keep the runs' folders here (default: a fresh temporary one): a second call with the same WORK, on a
#               machine that kept it, continues each FreeMatch run from its last `.resume` checkpoint (fmlong)
#   RUN=chain (default: --sizes 44000 20000, 3 generations) | long (44000, 6) | t240 (44000, 3, 240-epoch teacher)
#       | small (44000, 3, every model resnet10t_small: no stem max-pool; the methods too)
#       | fmlong (FreeMatch + DA for STEPS steps, default 6000, per seed at 44000 images, validated every 500, then one Noisy Student generation; no methods run)
set -u
OUT=${OUT:-runs/gpu} T=${T:-490} RUN=${RUN:-chain} PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD TQDM_DISABLE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
$PY -c "import torch, selftrain.stages; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
SETS=(--set robustness.corruption_images=200 --set robustness.perturbation_images=50 --set robustness.hard_images=300)
[ -n "${FMNIST:-}" ] && SETS+=(--set "data.fashion_mnist_dir=$FMNIST")
case $RUN in
  chain) CHAIN=(--sizes 44000 20000 --generations 3) ;;
  long) CHAIN=(--sizes 44000 --generations 6) ;;
  t240) CHAIN=(--sizes 44000 --generations 3 --set teacher.epochs=240) ;;
  small) CHAIN=(--sizes 44000 --generations 3)  # and the methods below at the default scale, with the same models
    for m in teacher generations.gen1 generations.gen2 generations.gen3; do SETS+=(--set "$m.model=resnet10t_small"); done ;;
  fmlong) ;;
  *) echo "RUN must be chain, long, t240, small or fmlong" >&2; exit 2 ;;
esac
WORK=${WORK:-$(mktemp -d)}  # fresh by default: experiments/compare_methods.py's Seed refuses folders prepared with other params
pids=()
if [ "$RUN" = fmlong ]; then
  for s in 0 1 2; do
    timeout "$T" $PY experiments/long_steps.py --seed $s --method freematch_da --steps "${STEPS:-6000}" --val-every 500 --then-noisy-student 1 "${SETS[@]}" \
      --set data.unlabeled=44000 --set runtime.num_workers=4 --work "$WORK/fm$s" --out "$OUT/fmlong$s.json" > "$OUT/fmlong$s.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  for f in "$OUT"/*.log; do echo "== $f"; grep -E "^\||Error|resuming|step [0-9]+/" "$f" | tail -6; done
  exit 0
fi
for s in 0 1 2; do
  timeout "$T" $PY experiments/unlabeled.py --seed $s "${CHAIN[@]}" --every-generation "${SETS[@]}" --set runtime.num_workers=4 \
    --work "$WORK/chain$s" --out "$OUT/$RUN$s.json" > "$OUT/$RUN$s.log" 2>&1 &
  pids+=($!)
done
METHODS=(--set data.unlabeled=4000 --methods noisy_student fixmatch freematch_da mpl reduced_mpl noisy_student_consistency)
[ "$RUN" = chain ] || METHODS=(--methods noisy_student freematch_da reduced_mpl)  # the default scale
timeout "$T" $PY experiments/compare_methods.py --seeds 0 "${SETS[@]}" "${METHODS[@]}" --work "$WORK/methods" --out "$OUT/methods-$RUN.json" > "$OUT/methods-$RUN.log" 2>&1 &
pids+=($!)
wait "${pids[@]}"
for f in "$OUT"/*.log; do echo "== $f"; grep -E "^\||Error" "$f" | tail -10; done
