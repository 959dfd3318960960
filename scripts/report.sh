#!/usr/bin/env bash
# The main job: the overhead report. Sets up libtorch (scripts/setup.sh),
# builds the report binary in release mode and runs it; arguments are passed
# through (see --help). On CPU it takes about 17 minutes on two cores and
# prints its progress; the report folder defaults to report-out/overhead/.
#
#   scripts/report.sh                 # the CPU selection
#   scripts/report.sh --full          # plus CUDA (ResNet-18 at N 256/512, losses, GEMM)
#   scripts/report.sh --quick         # seconds-long smoke run of the pipeline
#   scripts/report.sh --only large    # groups whose id contains "large"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec cargo run --release -p clae-benches --bin overhead-report -- "$@"
