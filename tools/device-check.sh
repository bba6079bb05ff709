#!/usr/bin/env bash
# Measures a real GPU in one short run (about 8 minutes), from binaries packed beforehand by
# tools/device-pack.sh (the GPU machine has no Rust toolchain and no network):
#
#   1. makes the Vulkan loader usable (unpacks the carried Debian packages when the machine has
#      no libvulkan; points VK_DRIVER_FILES at the NVIDIA ICD when the loader finds no driver);
#   2. lists the adapters;
#   3. runs the GPU test suite against the GPU's Vulkan adapter (every kernel against the CPU
#      reference, the forward, the samplers, f16, tuning);
#   4. `ddim tune` and `ddim bench --targets --json` (GEMM ceiling, kernels at the model's
#      shapes, whole runs) for the bundled model and the cifar10 architecture, in f32 and f16;
#   5. tools/bench_torch.py on CUDA with the same settings (diffusers from the carried wheels);
#   6. packs every JSON and log into $OUT/device-check.tar.gz (and a short summary.txt).
#
#   bash tools/device-check.sh            # from the repository root; OUT defaults to ./device-out
#   DDIM_CHECK_ANY_ADAPTER=1 DDIM_CHECK_QUICK=1 bash tools/device-check.sh
#       # rehearsal on a machine without a GPU: any adapter, tiny sizes, no test suite
#
# Commit the unpacked JSON under bench-results/ and add the figures to README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
OUT=${OUT:-$repo/device-out}
mkdir -p "$OUT"
res=$(mktemp -d)
summary=$res/summary.txt
log() { echo "== $*" | tee -a "$summary"; }
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
pack=.device
[ -f $pack/bin.tar.xz ] || { echo "no $pack/bin.tar.xz: run tools/device-pack.sh first and carry $pack" >&2; exit 1; }

# --- 1. binaries at the paths compiled into them, and a Vulkan loader --------------------------
manifest=$(cat $pack/manifest_dir)
if [ "$manifest" != "$repo" ]; then
  mkdir -p "$(dirname "$manifest")"
  [ -e "$manifest" ] || ln -s "$repo" "$manifest"
fi
bin=$manifest/target/release
mkdir -p "$bin" "$manifest/target/tmp"
tar -C "$res" -xJf $pack/bin.tar.xz
cp "$res/bin/ddim" "$bin/ddim"
export PATH=$bin:$PATH
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/xdg-$(id -u)}
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
export DDIM_TUNE_CACHE=$res/tuning.json
if ! ldconfig -p | grep -q libvulkan.so.1; then
  log "no Vulkan loader: unpacking the carried packages"
  for f in $pack/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if ! ddim adapters --backend vulkan 2>/dev/null | grep -q '^\[' && [ -f $icd ]; then
  log "the loader finds no Vulkan driver: using $icd"
  export VK_DRIVER_FILES=$icd
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

# --- 2. adapters --------------------------------------------------------------------------------
log "adapters ($(elapsed) s)"
ddim adapters --json >"$res/adapters.json" 2>"$res/adapters.log"
ddim adapters | tee -a "$summary"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$summary" 2>&1
if ! grep -q '"device_type": "DiscreteGpu"' "$res/adapters.json" && [ -z "${DDIM_CHECK_ANY_ADAPTER:-}" ]; then
  log "no discrete GPU adapter: stopping (DDIM_CHECK_ANY_ADAPTER=1 runs anyway)"
  tar -C "$res" -czf "$OUT/device-check.tar.gz" . && cp "$summary" "$OUT/"
  exit 1
fi

# Sizes of the measurements (a rehearsal on a CPU adapter uses tiny ones).
batch=16 steps=10 iters=5 big=128
[ -n "${DDIM_CHECK_QUICK:-}" ] && { batch=1 steps=2 iters=1 big=2; }

# --- 3. the GPU test suite on Vulkan --------------------------------------------------------------
log "GPU tests on Vulkan ($(elapsed) s)"
export DDIM_TEST_BACKENDS=vulkan DDIM_REQUIRE_GPU=1
failed=0
tests=("$res"/bin/test-gpu_* "$res"/bin/test-verify_cli "$res"/bin/test-bench_cli)
[ -n "${DDIM_CHECK_QUICK:-}" ] && tests=("$res"/bin/test-gpu_smoke)
for t in "${tests[@]}"; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  if timeout 120 "$t" --test-threads 1 >"$res/$name.log" 2>&1; then
    echo "  pass $name: $(grep -E '^test result' "$res/$name.log" | tail -1)" | tee -a "$summary"
  else
    failed=$((failed + 1))
    echo "  FAIL $name (log $name.log): $(grep -E '^test result|panicked' "$res/$name.log" | head -3 | tr '\n' ' ')" | tee -a "$summary"
  fi
done
unset DDIM_TEST_BACKENDS DDIM_REQUIRE_GPU
log "$failed test executable(s) failed"

# --- 4. tune and bench ----------------------------------------------------------------------------
run() { # name, command...
  local name=$1; shift
  if timeout 150 "$@" >"$res/$name.json" 2>"$res/$name.log"; then
    echo "  ok   $name" | tee -a "$summary"
  else
    echo "  FAIL $name: $(tail -2 "$res/$name.log" | tr '\n' ' ')" | tee -a "$summary"
  fi
}
for prec in f32 f16; do
  for model in bundled cifar10; do
    margs=(); [ $model = cifar10 ] && margs=(--arch cifar10)
    log "$model $prec: tune and bench ($(elapsed) s)"
    run "tune-$model-$prec" ddim tune "${margs[@]}" --backend vulkan --precision $prec --batch $batch --json
    run "bench-$model-$prec" ddim bench "${margs[@]}" --backend vulkan --precision $prec \
      --batch $batch --steps $steps --iters $iters --targets --json
  done
done
run "bench-bundled-batch$big-f32" ddim bench --backend vulkan --batch $big --steps $steps --iters $iters --json

# --- 5. PyTorch on CUDA, the same settings --------------------------------------------------------
py=${DDIM_CHECK_PYTHON:-python3}
torch_device=cuda
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || torch_device=cpu
log "PyTorch on $torch_device ($(elapsed) s)"
if ls $pack/whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ddim-site $pack/whl/*.whl >"$res/pip.log" 2>&1 && export PYTHONPATH=/tmp/ddim-site
fi
for model in bundled cifar10; do
  margs=(); [ $model = cifar10 ] && margs=(--arch cifar10)
  run "torch-$model" "$py" tools/bench_torch.py "${margs[@]}" --device "$torch_device" --batch $batch --steps $steps --iters $iters --json
done
run "torch-bundled-batch$big" "$py" tools/bench_torch.py --device "$torch_device" --batch $big --steps $steps --iters $iters --json

# --- 6. results -----------------------------------------------------------------------------------
log "done in $(elapsed) s"
python3 - "$res" >>"$summary" 2>&1 <<'EOF' || true
import json, pathlib, sys
res = pathlib.Path(sys.argv[1])
for f in sorted(res.glob("*.json")):
    try:
        d = json.loads(f.read_text())
    except Exception:
        continue
    if not isinstance(d, dict):
        continue
    run = d.get("run") or {}
    parts = [f.stem]
    if "images_per_s" in run:
        parts.append(f"{run['images_per_s']:.1f} img/s, forward {run.get('forward_gflops', 0):.0f} GFLOP/s")
    if d.get("gemm_gflops"):
        parts.append(f"gemm {d['gemm_gflops']:.0f} GFLOP/s")
    if "choices" in d:
        parts.append(f"tuned {len(d['choices'])} shapes in {d.get('seconds', 0):.2f} s")
    if len(parts) > 1:
        print("  " + "; ".join(parts))
EOF
cp "$summary" "$OUT/summary.txt"
tar -C "$res" --exclude=bin -czf "$OUT/device-check.tar.gz" .
cat "$summary"
