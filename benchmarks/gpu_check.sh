#!/usr/bin/env bash
# One command for the GPU figures of issue 13, meant to finish in under 6 minutes on one H100:
#   benchmarks/gpu_check.sh OUT_DIR
# builds rib_ext for the local GPU only (all cores), runs the CUDA tests, bench_ops, bench_rib at
# both sizes and make_cam at VOC size, and writes every log, table and JSON into OUT_DIR.
# GPU_CHECK_SKIP_GPU=1 runs only what a machine without a GPU can (the CPU build of the steps and
# a tiny bench_rib on the CPU), to check the script itself.
set -uo pipefail
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME TIMEOUT_S CMD...: run, log to OUT_DIR/NAME.log, go on after a failure
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS
    echo "== $name: $*" | tee -a "$out/summary.txt"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    [ "$rc" -eq 0 ] || status=1
    tail -n 25 "$out/$name.log"
}

python - >"$out/env.txt" 2>&1 <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
PY
cat "$out/env.txt"

if [ "${GPU_CHECK_SKIP_GPU:-0}" = "1" ]; then
    step bench_rib_cpu 600 python benchmarks/bench_rib.py --device cpu --sizes small --steps 1 \
        --images 1 --variants loop engine --json "$out/bench_rib_cpu.json"
    exit $status
fi

arch="$(python -c 'import torch; a, b = torch.cuda.get_device_capability(); print(f"{a}.{b}")')" || {
    echo "no CUDA device visible: nothing to check (GPU_CHECK_SKIP_GPU=1 for the CPU part)"; exit 2; }
step build 240 env RIB_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
    python setup.py build_ext --inplace
step ops_backend 60 python -m rib_ext.ops
step cuda_tests 240 python -m pytest -q -m needs_cuda tests -p no:cacheprovider
step bench_ops 120 python benchmarks/bench_ops.py --device cuda --no-loop
step bench_rib_small 150 python benchmarks/bench_rib.py --device cuda --sizes small --images 16 \
    --json "$out/bench_rib_small.json"
step bench_rib_voc 300 python benchmarks/bench_rib.py --device cuda --sizes voc --images 8 --variants \
    authors loop engine-before engine engine+bf16 engine+bf16+cl "G4 vmap+bf16+cl" "Gauto+bf16+cl" \
    --json "$out/bench_rib_voc.json"
step make_cam_voc 120 python benchmarks/bench_make_cam.py --device cuda --images 32 --size 448 \
    --json "$out/make_cam_voc.json"
echo "status $status; logs and JSON in $out" | tee -a "$out/summary.txt"
exit $status
