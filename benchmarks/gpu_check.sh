#!/usr/bin/env bash
# The one command for the GPU figures, under 8 minutes on one H100 or H200:
#   benchmarks/gpu_check.sh OUT_DIR
# builds rib_ext for the local GPU (all cores), runs the CUDA tests, bench_ops, bench_sgd, bench_rib at
# both sizes and make_cam at VOC size. Every step has a time limit (they add up to 480 s) and goes on
# after a failure; bench_rib rewrites its JSON after every variant and skips a failing one, so a
# step cut short keeps what it measured. OUT_DIR ends with exactly two files: summary.txt (each
# step's command, status, seconds and the tables) and gpu_check.tar.gz (every log and JSON).
#
# GPU_CHECK_DRY_RUN=1 (or --dry-run after OUT_DIR) runs every step at a tiny size on the CPU, to
# check the script itself on a machine without a GPU (the build only imports the extension).
set -uo pipefail
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]}"
dry="${GPU_CHECK_DRY_RUN:-0}"
py="${PYTHON:-python}"  # the interpreter with torch (PYTHON=... to choose another)
[ "${2:-}" = "--dry-run" ] && dry=1
slack=1
[ "$dry" = "1" ] && slack=10
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
summary="$work/summary.txt"
status=0
budget=0
step() {  # step NAME LIMIT_S CMD...: run, log to NAME.log, summary line, go on after a failure
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS
    budget=$((budget + limit))
    echo "== $name (limit $limit s): $*" | tee -a "$summary"
    # a dry run on a shared CPU gets slack: it checks the script, not the time
    timeout --kill-after=5 "$((limit * slack))" "$@" >"$work/$name.log" 2>&1
    local rc=$?
    local why=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why=" (time limit reached)"
    echo "   rc=$rc$why, $((SECONDS - t0)) s" | tee -a "$summary"
    [ "$rc" -eq 0 ] || status=1
    # the tables (bench scripts) or the tail (others) into the summary
    if grep -q '^|' "$work/$name.log"; then
        grep -E '^(\||###|device|gpu|torch|backends)' "$work/$name.log" >>"$summary"
    else
        tail -n 15 "$work/$name.log" >>"$summary"
    fi
}
finish() {
    echo "status $status; step limits $budget s; wall $SECONDS s" | tee -a "$summary"
    # Written under temporary names, then renamed: OUT never holds a half-written file.
    tar -czf "$out/.gpu_check.tar.gz.tmp" -C "$work" . \
        && mv "$out/.gpu_check.tar.gz.tmp" "$out/gpu_check.tar.gz"
    mv "$summary" "$out/.summary.txt.tmp" && mv "$out/.summary.txt.tmp" "$out/summary.txt"
    rm -rf "$work"
    exit $status
}

"$py" - >"$work/env.txt" 2>&1 <<'PY'
import os, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cores", os.cpu_count())
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
          f"memory {total / 2**30:.0f} GiB ({free / 2**30:.0f} free)")
PY
cat "$work/env.txt" | tee -a "$summary"

if [ "$dry" = "1" ]; then
    echo "DRY RUN: every step at a tiny size on the CPU" | tee -a "$summary"
    dev=(--device cpu)
    tiny=(--sizes tiny --images 1 --steps 1 --no-flops)
    step build 95 "$py" -c "import torch, rib_ext._C; print('would run: RIB_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python setup.py build_ext --inplace')"
    step ops_backend 10 "$py" -m rib_ext.ops
    step cuda_tests 90 "$py" -m pytest -q -m needs_cuda tests/test_rib_speed.py -p no:cacheprovider
    step bench_ops 40 "$py" benchmarks/bench_ops.py "${dev[@]}" --tiny --no-compile --no-loop --min-run-time 0.01
    step bench_sgd 15 "$py" benchmarks/bench_sgd.py "${dev[@]}" --backbone resnet_tiny --groups 1 2 \
        --min-run-time 0.01 --json "$work/bench_sgd.json"
    step bench_rib_small 90 "$py" benchmarks/bench_rib.py "${dev[@]}" "${tiny[@]}" \
        --variants loop engine "G4 vmap+bf16+cl" --json "$work/bench_rib_small.json"
    step bench_rib_voc 120 "$py" benchmarks/bench_rib.py "${dev[@]}" "${tiny[@]}" \
        --variants authors engine --json "$work/bench_rib_voc.json"
    step make_cam_voc 20 "$py" benchmarks/bench_make_cam.py "${dev[@]}" --images 1 --size 48 \
        --backbone resnet_tiny --variants float32 --json "$work/make_cam_voc.json"
    finish
fi

if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device visible: nothing to check (GPU_CHECK_DRY_RUN=1 checks the script on the CPU)" \
        | tee -a "$summary"
    status=2
    finish
fi
# Limits (seconds) add up to 480. Build: 46 s measured on an H100 host with 16 jobs.
step build 95 env RIB_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 "$py" setup.py build_ext --inplace
step ops_backend 10 "$py" -m rib_ext.ops
step cuda_tests 90 "$py" -m pytest -q -m needs_cuda tests -p no:cacheprovider
step bench_ops 40 "$py" benchmarks/bench_ops.py --device cuda --no-loop --min-run-time 0.2
step bench_sgd 15 "$py" benchmarks/bench_sgd.py --device cuda --groups 1 4 8 --min-run-time 0.2 \
    --json "$work/bench_sgd.json"
step bench_rib_small 90 "$py" benchmarks/bench_rib.py --device cuda --sizes small --images 16 \
    --json "$work/bench_rib_small.json"
step bench_rib_voc 120 "$py" benchmarks/bench_rib.py --device cuda --sizes voc --images 6 --variants \
    loop engine engine+bf16+cl "Gauto+bf16+cl" "G4 vmap+bf16+cl" "G4 vmap+bf16+cl+graphs" \
    "G4 vmap+bf16+cl+graphs+targets" authors engine-before \
    --json "$work/bench_rib_voc.json"
step make_cam_voc 20 "$py" benchmarks/bench_make_cam.py --device cuda --images 16 --size 448 \
    --json "$work/make_cam_voc.json"
finish
