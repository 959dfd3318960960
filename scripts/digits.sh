#!/usr/bin/env bash
# The digits replication (issue 6): plain contrastive learning vs CLAE on
# scikit-learn's 8x8 digits, every loss, 5 seeds, reference f32 on the CPU
# (a few minutes). Writes report-out/digits/ and prints the summary table.
#
# Usage: scripts/digits.sh [--quick] [--seeds N] [--epochs N] [--losses LIST]
#                          [--out DIR] [--data PATH] [--no-progress]   (see --help)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec cargo run --release -p clae-replication --bin digits -- "$@"
