#!/usr/bin/env bash
# The Fashion-MNIST replication: plain vs CLAE vs CLAE(eps = 0) for every
# loss, an eps sweep, ACL-/RoCL-style steps and plain at CLAE's wall-clock
# for SimCLR; kNN-200, a validated linear probe and its PGD-20 robust
# accuracy; 3 seeds, reference f32 on the CPU. Writes report-out/fashion-mnist/
# (each finished cell is appended to runs.csv; a rerun resumes) and prints
# the summary.
#
# Usage: scripts/fashion.sh [--quick] [--seeds N] [--epochs N] [--train N] ...
#                           [--out DIR] [--data DIR] [--no-progress]   (see --help)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
exec cargo run --release -p clae-replication --bin fashion -- "$@"
