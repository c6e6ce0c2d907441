#!/usr/bin/env bash
# One prepared check of diffgen on a lent GPU machine (issue 19), about 8 minutes in all:
#   1. the test suite with CUDA visible;
#   2. a 500-step training run in bf16 on cuda, on a small data set this script draws;
#   3. generate and upscale on cuda from the commands, each timed;
#   4. the sampling and training benchmarks against diffusers on the GPU.
# Each step has its own time limit; a failing step is reported and the next one runs. Results go to
# $OUT as text (summary.txt first; one .txt per step). Needs no network: run it from the repository root
# of a clone where torch with CUDA is installed (and, for step 4, diffusers):
#
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#     DEVICE=cpu STEPS=5 TESTS=0 BENCH_STEPS=2 SAMPLE_STEPS=2 PHOTO=64 bash benchmarks/gpu_check.sh    # a dry run of the script on a CPU
set -x
set -o pipefail

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-500}
BENCH_STEPS=${BENCH_STEPS:-12}

# step NAME SECONDS COMMAND...: run it, its output into $OUT/NAME.txt, its exit status and time into the summary.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    local verdict=ok
    [ "$rc" -eq 124 ] && verdict="TIMED OUT after ${limit}s"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && verdict="FAILED (exit $rc)"
    echo "$name: $verdict in $((SECONDS - start)) s" | tee -a "$SUMMARY"
    return 0
}

step environment 60 bash -c "nvidia-smi; $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\"); print(\"bf16\", torch.cuda.is_available() and torch.cuda.is_bf16_supported())'; $PY -c 'import diffusers; print(\"diffusers\", diffusers.__version__)'; $PY -m pip list 2>/dev/null | grep -i -E 'torch|diffusers|typer|rich|safetensors|pillow|numpy|huggingface|pytest|hypothesis'"

# 1. The test suite, CUDA visible (the tests pick their devices; this shows whether any breaks with a GPU present).
[ "${TESTS:-1}" = 1 ] && step tests 200 $PY -m pytest -q -p no:cacheprovider tests

# 2. A small data set: two classes of 64 coloured squares on noise, 32x32, and one 512x512 (PHOTO) image to upscale.
step make_data 60 $PY - "$WORK" "${PHOTO:-512}" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
for name, colour in (("red", (230, 30, 30)), ("blue", (30, 30, 230))):
    folder = root / "data" / name
    folder.mkdir(parents=True)
    for i in range(64):
        pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        x, y = rng.integers(0, 16, 2)
        pixels[y:y + 16, x:x + 16] = colour
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
small = rng.integers(0, 255, (65, 65, 3), dtype=np.uint8)
side = int(sys.argv[2])
Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(root / "photo.png")
print("data in", root)
EOF

step train_bf16 150 $PY -m diffgen train "$WORK/data" --out "$WORK/run" --max-steps "$STEPS" --precision bf16 \
    --device "$DEVICE" --save-every 250 --sample-every 250

# 3. Generate and upscale on cuda, whole commands (start-up included), each twice: cold, then warm caches.
for i in 1 2; do
    step "generate_$i" 60 $PY -m diffgen generate --model "$WORK/run" --n 16 --device "$DEVICE" \
        --out "$WORK/gen$i" --overwrite
    step "generate_bundled_$i" 60 $PY -m diffgen generate --n 16 --device "$DEVICE" --out "$WORK/digits$i" --overwrite
    step "upscale_$i" 60 $PY -m diffgen upscale "$WORK/photo.png" --device "$DEVICE" --out "$WORK/up$i.png" --overwrite
done
step upscale_bf16 60 $PY -m diffgen upscale "$WORK/photo.png" --device "$DEVICE" --precision bf16 \
    --out "$WORK/up_bf16.png" --overwrite
step upscale_compare 60 $PY - "$WORK" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image

root = Path(sys.argv[1])
a = np.asarray(Image.open(root / "up1.png"), dtype=float)
for other in ("up2.png", "up_bf16.png"):
    if (root / other).exists():
        b = np.asarray(Image.open(root / other), dtype=float)
        print(f"up1.png vs {other}: max |diff| {np.abs(a - b).max():.0f} grey levels, RMS {np.sqrt(((a - b) ** 2).mean()):.3f}")
EOF

# 4. Benchmarks against diffusers on the GPU (float32 both; bf16 autocast both for training).
step sampling_vs_diffusers 120 $PY benchmarks/sampling_speed.py --device "$DEVICE" --repeats 3 --steps "${SAMPLE_STEPS:-50}" \
    --json "$OUT/sampling_cuda.json"
step training_vs_diffusers 120 $PY benchmarks/train_throughput.py --device "$DEVICE" --steps "$BENCH_STEPS" \
    --json "$OUT/training_cuda.json"
step training_vs_diffusers_bf16 120 $PY benchmarks/train_throughput.py --device "$DEVICE" --steps "$BENCH_STEPS" --precision bf16 \
    --json "$OUT/training_cuda_bf16.json"

cp "$WORK"/run/log.jsonl "$OUT/train_log.jsonl" 2>/dev/null
tail -n 3 "$OUT"/*.txt > "$OUT/tails.txt" 2>&1
rm -rf "$WORK"
echo "summary in $SUMMARY"
cat "$SUMMARY"
