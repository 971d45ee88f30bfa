#!/usr/bin/env bash
# The one command for the GPU figures, within 8 minutes on one H100 or H200:
#   benchmarks/gpu_check.sh OUT_DIR [--dry-run]
#
# Steps, the figures that matter first: the environment; the build for the visible GPU (setup.py
# picks its architecture); which backend the operators run on (after the build every step runs with
# RIB_EXT_REQUIRE_COMPILED=1: a failed build fails them instead of timing the pure-PyTorch
# fallbacks); RIB at VOC size, the engine's best settings against the authors' loop, with peak
# memory; G=8 against G=1 at 128 px; what each speed setting gains at 128 px (with FLOPs and MFU);
# the CUDA tests; make_cam at VOC size; the SGD update; the pooling + loss operators.
#
# Every step has a time limit (they add up to the sum printed first, at most 420 s; what the call
# adds on top: up to 2 s of --kill-after per killed step and the copies into OUT_DIR) and goes on
# after a failure. The benchmarks print each row and rewrite their JSON as they measure, so a step
# cut short keeps its rows. After EVERY step OUT_DIR/summary.txt (each step's command, status,
# seconds and rows) and OUT_DIR/gpu_check.tar.gz (every log and JSON so far) are rewritten (a
# temporary name, then a rename); on TERM or INT the running step is stopped and both are written
# once more. So a call cut short at any point leaves every finished step in OUT_DIR.
#
# GPU_CHECK_DRY_RUN=1 (or --dry-run) runs the same steps at a tiny size on the CPU (the build
# step only imports the extension): a check of the script on a machine without a GPU.
# GPU_CHECK_LIMIT_SCALE multiplies every limit (default 1; 10 in a dry run, whose shared CPU is
# slow); the test of this script sets it so small that steps are killed.
set -uo pipefail
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]}"
dry="${GPU_CHECK_DRY_RUN:-0}"
py="${PYTHON:-python}"  # the interpreter with torch (PYTHON=... to choose another)
[ "${2:-}" = "--dry-run" ] && dry=1
scale="${GPU_CHECK_LIMIT_SCALE:-}"
[ -n "$scale" ] || { [ "$dry" = "1" ] && scale=10 || scale=1; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
summary="$work/summary.txt"
: >"$summary"

# name:limit, in the order they run
STEPS=(env:10 build:80 ops_backend:10 rib_voc:110 rib_groups_small:40 rib_settings_small:55
       cuda_tests:60 make_cam_voc:20 bench_sgd:10 bench_ops:10 bench_adapters:15)
budget=0
for s in "${STEPS[@]}"; do budget=$((budget + ${s#*:})); done
limit_of() { local s; for s in "${STEPS[@]}"; do [ "${s%%:*}" = "$1" ] && echo "${s#*:}"; done; }

status=0
finished=0
current=""
child=""
last_rc=0

publish() {  # every log and JSON so far, then the summary, into OUT (temporary names, renamed)
    tar -czf "$out/.gpu_check.tar.gz.tmp" -C "$work" . 2>/dev/null \
        && mv -f "$out/.gpu_check.tar.gz.tmp" "$out/gpu_check.tar.gz"
    cp "$summary" "$out/.summary.txt.tmp" && mv -f "$out/.summary.txt.tmp" "$out/summary.txt"
}

finish() {  # on EXIT, TERM and INT: the last line, OUT written once more
    local why="${1:-}"
    trap - EXIT TERM INT
    if [ -n "$child" ]; then  # cut short while a step ran: stop it (timeout passes the signal on)
        kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null
        echo "   interrupted ($why) during $current after $((SECONDS - step_t0)) s" >>"$summary"
        status=1
    fi
    echo "status $status; $finished of ${#STEPS[@]} steps finished; step limits $budget s" \
         "(x$scale); wall $SECONDS s${why:+; $why}" | tee -a "$summary"
    publish
    rm -rf "$work"
    exit "$status"
}
trap 'finish TERM' TERM
trap 'finish INT' INT
trap 'finish' EXIT

step() {  # step NAME CMD...: run under its limit, log to NAME.log, rows into the summary, publish
    local name="$1"; shift
    local limit lim
    limit="$(limit_of "$name")"
    lim="$(awk -v l="$limit" -v s="$scale" 'BEGIN { printf "%.2f", l * s }')"
    step_t0=$SECONDS
    current="$name"
    echo "== $name (limit $lim s): $(echo "$*" | tr -s '\n ' '  ')" | tee -a "$summary"
    # in the background, so that a TERM reaches the trap while the step runs
    timeout --kill-after=2 "$lim" "$@" >"$work/$name.log" 2>&1 &
    child=$!
    wait "$child"
    last_rc=$?
    child=""
    local why=""
    { [ "$last_rc" -eq 124 ] || [ "$last_rc" -eq 137 ]; } && why=" (time limit reached)"
    echo "   rc=$last_rc$why, $((SECONDS - step_t0)) s" | tee -a "$summary"
    [ "$last_rc" -eq 0 ] || status=1
    # the rows and tables (benchmarks), or the failures and the tail (the others), into the summary
    if grep -qE '^(row |\||###)' "$work/$name.log"; then
        grep -E '^(row |\||###|gpu|device)' "$work/$name.log" >>"$summary"
    else
        grep -E '(FAILED|ERROR)' "$work/$name.log" | head -n 40 >>"$summary"
        tail -n 12 "$work/$name.log" >>"$summary"
    fi
    finished=$((finished + 1))
    publish
}

if [ "$dry" = "1" ]; then  # the same steps, at a tiny size, on the CPU
    dev=cpu
    voc=(--sizes tiny --images 1 --steps 1)
    small=(--sizes tiny --steps 1)
    groups_images=(--images 1)
    settings_images=(--images 1)
    cam=(--images 2 --warmup 1 --size 48 --backbone resnet_tiny)
    sgd=(--backbone resnet_tiny --min-run-time 0.01)
    opsargs=(--tiny --min-run-time 0.01)
    adapters=(--images 4 --size 64 --steps 1 --others 2 --families torchvision:resnet50)
    build=("$py" -c "import sys, torch, rib_ext._C; print('dry run: rib_ext._C imports; the real call runs:', sys.argv[1:])"
           env RIB_EXT_CUDA=1 "MAX_JOBS=$(nproc)" python setup.py build_ext --inplace)
else
    dev=cuda
    voc=(--sizes voc --images 4)
    small=(--sizes small)
    groups_images=(--images 16)
    settings_images=(--images 8)
    cam=(--images 8 --warmup 1 --size 448)
    sgd=(--min-run-time 0.1)
    opsargs=(--min-run-time 0.1)
    adapters=(--images 8 --size 224 --steps 3 --others 8)
    build=(env RIB_EXT_CUDA=1 "MAX_JOBS=$(nproc)" "$py" setup.py build_ext --inplace)
fi
echo "gpu_check: ${#STEPS[@]} steps, step limits $budget s (at most 420), x$scale; $([ "$dry" = 1 ] && echo DRY RUN on the CPU at a tiny size)" \
    | tee -a "$summary"
[ "$budget" -le 420 ] || { echo "error: step limits add up to $budget s, over 420" | tee -a "$summary"; status=2; exit 2; }

# (a step's standard input is /dev/null: the probe goes through a file)
cat >"$work/env_probe.py" <<'PY'
import os, platform, sys, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cores", os.cpu_count())
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
          f"memory {total / 2**30:.0f} GiB ({free / 2**30:.0f} free)")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    print("no CUDA device visible: nothing to check (GPU_CHECK_DRY_RUN=1 checks the script on the CPU)")
    sys.exit(3)
PY
step env "$py" "$work/env_probe.py" "$dev"
if [ "$last_rc" -eq 3 ]; then status=2; exit 2; fi

step build "${build[@]}"
export RIB_EXT_REQUIRE_COMPILED=1  # from here on a missing or broken build is an error
step ops_backend "$py" benchmarks/bench_facts.py --require-compiled "$dev"
step rib_voc "$py" benchmarks/bench_rib.py --device "$dev" "${voc[@]}" --no-flops --variants \
    authors "G4 vmap+bf16+cl+graphs" "G4 vmap+bf16+cl" engine "Gauto+bf16+cl" \
    --json "$work/rib_voc.json"
step rib_groups_small "$py" benchmarks/bench_rib.py --device "$dev" "${small[@]}" "${groups_images[@]}" \
    --no-flops --variants "engine+bf16+cl" "G8 vmap+bf16+cl" "G8 vmap+bf16+cl+graphs" \
    --json "$work/rib_groups_small.json"
step rib_settings_small "$py" benchmarks/bench_rib.py --device "$dev" "${small[@]}" "${settings_images[@]}" --variants \
    loop engine-before engine engine+fold engine+tf32 engine+bf16 engine+cl engine+bf16+cl+prefetch \
    engine+bf16+cl+graphs "G4 vmap+bf16+cl" "G4 vmap+bf16+cl+graphs" \
    "G4 vmap+bf16+cl+graphs+targets" --json "$work/rib_settings_small.json"
# the engine's tests first (graphs, slots, speed settings), one line per test as it ends
first=(tests/test_rib_speed.py tests/test_precision.py)
step cuda_tests bash -c '"$0" -m pytest -v --tb=short -m needs_cuda -p no:cacheprovider "$1" "$2"; a=$?
    "$0" -m pytest -v --tb=short -m needs_cuda -p no:cacheprovider tests --ignore="$1" --ignore="$2"
    b=$?; [ "$a" -eq 0 ] && [ "$b" -eq 0 ]' "$py" "${first[@]}"
step make_cam_voc "$py" benchmarks/bench_make_cam.py --device "$dev" "${cam[@]}" \
    --variants float32 bf16+cl --json "$work/make_cam_voc.json"
step bench_sgd "$py" benchmarks/bench_sgd.py --device "$dev" "${sgd[@]}" --groups 1 4 \
    --json "$work/bench_sgd.json"
step bench_ops "$py" benchmarks/bench_ops.py --device "$dev" "${opsargs[@]}" --no-loop --no-compile \
    --json "$work/bench_ops.json"
step bench_adapters "$py" benchmarks/bench_adapters.py --device "$dev" "${adapters[@]}" \
    --json "$work/bench_adapters.json"
exit "$status"
