#!/usr/bin/env bash
# Fashion-MNIST on one GPU: the `fashion-mnist` preset at IPC 10 and 50 (plain minimax), the same fine-tuned
# model sampled with mode guidance (its strength and stop level chosen on the validation split), both over
# sampling seeds 0, 1, 2 beside random real (3 selection seeds) and herding; then benchmarks/gpu.py (DiT-XL/2
# fine-tuning and sampling speed) with the time that is left.
#
#   DATA=fashion-mnist:DIR OUT=DIR bash benchmarks/fm_gpu.sh          # on the GPU machine (device auto)
#   TINY=1 DEVICE=cpu OUT=/tmp/smoke bash benchmarks/fm_gpu.sh        # a minute-scale smoke run of the path
#
# `python3 -m minimaxdd` must import: installed, or PYTHONPATH=src (as on the lent H200, whose python3 has torch
# and the other dependencies but not this package).
#
# Every stage's records (no checkpoints) go to $OUT/results.tgz after each step, so a run stopped at its time
# limit still returns what it finished. The test set is read only to report; choose uses the validation split.
set -u
OUT=${OUT:?set OUT}
RUNS=${RUNS:-/tmp/fm-gpu}
DATA=${DATA:-fashion-mnist}
DEVICE=${DEVICE:-auto}
IPCS=${IPCS:-10,50}
BUDGET=${BUDGET:-520}             # seconds for everything; each step gets what is left
export PYTHONUNBUFFERED=1 MINIMAXDD_QUIET=1
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
save() { tar czf "$OUT/results.tgz" --exclude='*.safetensors' --exclude='*.pt' -C "$RUNS" . 2>/dev/null; }
step() {  # step NAME CMD...: run with the time left, log to $OUT/NAME.log
    local name=$1; shift
    local t; t=$(left)
    if (( t < 20 )); then echo "skip $name: ${t}s left"; return 1; fi
    echo "== $name ($(date +%T), ${t}s left)"
    timeout "$t" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
    echo "== $name rc=$rc after $(( $(date +%s) - start ))s"; tail -n 4 "$OUT/$name.log"; save
    return $rc
}
mkdir -p "$OUT" "$RUNS"
tiny=()
if [[ -n "${TINY:-}" ]]; then
    tiny=(--set base.train.steps=20 --set base.train.checkpoint_every=10 --set finetune.steps=10
          --set choose.epochs=2 --set 'evaluate.epochs={"10": 2, "50": 2}' --set evaluate.repeats=1
          --set evaluate.metrics=false --set evaluate.full_epochs=0)
fi
python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null

step plain python3 -m minimaxdd distill --preset fashion-mnist --data "$DATA" --ipc "$IPCS" --device "$DEVICE" \
    --set 'evaluate.baselines=["random","herding"]' "${tiny[@]}" --out "$RUNS/plain"
# the base's last weights and the fine-tuned model come back too (about 14 MB), so later rows can be sampled elsewhere
(cd "$RUNS" && tar czf "$OUT/models.tgz" $(ls plain/base/*.safetensors | tail -n 1) plain/base/*.json \
    $(ls plain/finetune/*.safetensors | tail -n 1) plain/finetune/*.json 2>/dev/null)

# the same base and fine-tuned model (hard links; the stages' keys match), mode-guided sampling chosen at cfg 2;
# stop 3.44 is MGD3's (diffusion.guides.MGD3_SIGMA_STOP, the default)
mkdir -p "$RUNS/mode" && cp -al "$RUNS/plain/base" "$RUNS/plain/finetune" "$RUNS/mode/" 2>/dev/null
step mode python3 -m minimaxdd distill --preset fashion-mnist --data "$DATA" --ipc "$IPCS" --device "$DEVICE" \
    --set 'choose.cfg=[]' --set sample.cfg=2.0 --set 'choose.mode_guidance=[0.5,1.0]' \
    --set 'choose.mode_stop=[3.44,1.0]' --set 'evaluate.baselines=[]' --set evaluate.full_epochs=0 \
    "${tiny[@]}" --out "$RUNS/mode"

step plain-seeds python3 benchmarks/seeds.py "$RUNS/plain" --seeds 1,2 --ipc "$IPCS" --device "$DEVICE" --out "$RUNS/plain-seeds.json"
step mode-seeds python3 benchmarks/seeds.py "$RUNS/mode" --seeds 1,2 --ipc "$IPCS" --device "$DEVICE" --out "$RUNS/mode-seeds.json"

quick=(); [[ -n "${TINY:-}" ]] && quick=(--model dit-s/2 --latent 8 --quick)
step gpu-speed python3 benchmarks/gpu.py --device "$DEVICE" "${quick[@]}" --out "$RUNS/gpu.json"
save
echo "done after $(( $(date +%s) - start ))s"
