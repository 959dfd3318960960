#!/usr/bin/env bash
# The GPU checks, in one run of under 8 minutes on the device machine, from
# binaries built elsewhere by scripts/device-build.sh (nothing is compiled
# here):
#
#   1. conformance: the main suite binary (every backend pair; the CUDA pair
#      "tch CUDA f32 (TF32 off) vs reference f64" is the one that needs the
#      GPU — the suite prints "CUDA not available: skipped ..." without one);
#   2. the accelerated crate's CUDA tests (cuda, cuda_loading, device);
#   3. the CUDA groups of `overhead-report --full`: GEMM 8192, the losses
#      (CPU and CUDA), the large MLP at N 1024, ResNet-18 at N 256 and 512
#      with every recipe (plain, lean, authors', ACL, RoCL), libtorch and
#      PyTorch eager.
#
# Everything is written under $OUT (default ./device-out): one log per stage,
# nvidia-smi's view, the report folder (overhead/), and summary.txt with
# each stage's exit status and seconds. Exit status: 0 when every stage
# passed, 1 when one failed, 2 for a usage error or missing binaries.
#
#   scripts/device-check.sh [--dry-run] [--out DIR] [--bin DIR]
#
# Binaries are taken from --bin DIR, else device/ when it exists, else from
# target/release (overhead-report) and target/release/deps (the newest test
# binary of each name) — so `--dry-run` also works in a checkout that built
# with cargo but never ran device-build.sh. --dry-run prints every command
# with its time limit and whether each binary is there, and runs nothing but
# `overhead-report --list` of the selected groups (when that binary is
# there); missing binaries are reported, not an error (exit 0), so
# scripts/test.sh can run it anywhere.
#
# Time limits per stage (seconds; environment), 470 s in all: SUITE_TIMEOUT
# 100, CUDA_TESTS_TIMEOUT 60 (cuda) and SMALL_TESTS_TIMEOUT 40 (cuda_loading,
# device, each), REPORT_TIMEOUT 230 (the report's groups are budgeted at
# about 130 s at TIME_SCALE 0.7). PROPTEST_CASES (default 12) and TIME_SCALE
# (the report's --time-scale, default 0.7) shrink stages.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

dry_run=0
out=${OUT:-./device-out}
bin=""
while (($#)); do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) out=${2:?--out needs a folder}; shift ;;
        --bin) bin=${2:?--bin needs a folder}; shift ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "device-check: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

suite_timeout=${SUITE_TIMEOUT:-100}
cuda_timeout=${CUDA_TESTS_TIMEOUT:-60}
small_timeout=${SMALL_TESTS_TIMEOUT:-40}
report_timeout=${REPORT_TIMEOUT:-230}
export PROPTEST_CASES=${PROPTEST_CASES:-12}
time_scale=${TIME_SCALE:-0.7}
groups="gemm-8192,loss-n,large-plain-n1024,resnet18-simclr-n256,resnet18-simclr-n512"

# name -> path of each binary
declare -A path
names=(suite accelerated-cuda accelerated-cuda_loading accelerated-device overhead-report)
newest() { # newest target/release/deps/NAME-<hash> executable
    local f
    f=$(ls -t target/release/deps/"$1"-* 2>/dev/null | grep -v '\.d$' | head -n 1 || true)
    printf '%s' "$f"
}
if [[ -z "$bin" && -d device ]]; then bin=device; fi
for n in "${names[@]}"; do
    if [[ -n "$bin" ]]; then
        path[$n]="$bin/$n"
    elif [[ "$n" == overhead-report ]]; then
        path[$n]=target/release/overhead-report
    else
        path[$n]=$(newest "${n#accelerated-}")
        [[ -n "${path[$n]}" ]] || path[$n]="target/release/deps/${n#accelerated-}-<hash>"
    fi
done
echo "device-check: binaries from ${bin:-target/release}"
missing=0
for n in "${names[@]}"; do
    if [[ -x "${path[$n]}" ]]; then
        echo "  found   $n: ${path[$n]}"
    else
        echo "  MISSING $n: ${path[$n]}"
        missing=$((missing + 1))
    fi
done

# libtorch: the torch package of this machine's python3 (its lib/), and the
# same python3 for the PyTorch eager members
torch_dir=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))' 2>/dev/null || true)
torch_version=$(python3 -c 'import torch;print(torch.__version__)' 2>/dev/null || true)
if [[ -n "$torch_dir" ]]; then
    export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export CLAE_PYTHON=${CLAE_PYTHON:-$(command -v python3)}
    echo "  torch   $torch_version at $torch_dir (LD_LIBRARY_PATH=$torch_dir/lib)"
    case "$torch_version" in
        2.11.0*) ;;
        *) echo "  warning: the binaries were built against torch 2.11.0; this machine has $torch_version" ;;
    esac
else
    echo "  warning: python3 has no torch here: LD_LIBRARY_PATH not set (the binaries' rpath is tried)"
fi
if [[ -n "$bin" && -d "$bin/lib" ]]; then
    # OpenBLAS and its Fortran runtime, copied by device-build.sh
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(cd "$bin/lib" && pwd)"
    echo "  libs    $bin/lib (OpenBLAS for the reference) on LD_LIBRARY_PATH"
fi
export CLAE_EAGER_SCRIPT=${CLAE_EAGER_SCRIPT:-$PWD/benches/python/eager.py}
# The CPU pairs run in CI on every machine; here only the CUDA pair (a suite
# left with no pair, e.g. CUDA failing to initialise, fails). Override with
# CLAE_SUITE_PAIRS= (empty: every pair).
export CLAE_SUITE_PAIRS=${CLAE_SUITE_PAIRS-CUDA}

report_args=(--full --only "$groups" --no-memory --no-profile --time-scale "$time_scale" --out "$out/overhead")
stages=(
    "conformance|$suite_timeout|${path[suite]}"
    "cuda-tests|$cuda_timeout|${path[accelerated-cuda]} --test-threads 1"
    "cuda-loading|$small_timeout|${path[accelerated-cuda_loading]} --test-threads 1"
    "device-tests|$small_timeout|${path[accelerated-device]} --test-threads 1"
    "overhead|$report_timeout|${path[overhead-report]} ${report_args[*]}"
)

if ((dry_run)); then
    echo "device-check --dry-run: would write under $out and run (name | time limit s | command):"
    for s in "${stages[@]}"; do echo "  $s"; done
    if [[ -x "${path[overhead-report]}" ]]; then
        echo "  the report's selected groups:"
        if ! "${path[overhead-report]}" "${report_args[@]}" --list | sed 's/^/    /'; then
            echo "  warning: overhead-report --list failed here (libtorch not found?)"
        fi
    fi
    echo "device-check --dry-run: $missing of ${#names[@]} binaries missing (build them with scripts/device-build.sh)"
    exit 0
fi

if ((missing)); then
    echo "device-check: $missing binaries missing; run scripts/device-build.sh first (and carry device/)" >&2
    exit 2
fi
mkdir -p "$out"
summary="$out/summary.txt"
{
    echo "device-check $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
    echo "torch $torch_version at ${torch_dir:-?}; PROPTEST_CASES=$PROPTEST_CASES; TIME_SCALE=$time_scale"
} >"$summary"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see nvidia-smi.txt)" >>"$summary"
failed=0
for s in "${stages[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    echo "==> $name (limit ${limit} s): $cmd"
    start=$(date +%s)
    # word splitting of $cmd is intended: the paths and arguments have no spaces
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$limit" $cmd >"$out/$name.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    tail -n 5 "$out/$name.log"
    status=passed
    if ((rc == 124 || rc == 137)); then status="timed out"; elif ((rc != 0)); then status="failed (exit $rc)"; fi
    ((rc == 0)) || failed=1
    printf '%-14s %-18s %4d s   %s\n' "$name" "$status" "$secs" "$cmd" | tee -a "$summary"
done
echo "summary: $summary"
exit "$failed"
