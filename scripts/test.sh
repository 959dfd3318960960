#!/usr/bin/env bash
# The full test suite: formatting, lints, every test and doctest of the
# workspace, and the docs with warnings denied. Runs setup first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
step() { printf '\n==> %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo test (all crates, tests and doctests)"
cargo test --workspace
step "conformance vectors through the Python port written from the docs"
python=${CLAE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clae}/torch-2.11.0/bin/python
"$python" conformance/python/port.py
step "scripts/device-check.sh --dry-run (the GPU check script still finds its way)"
scripts/device-check.sh --dry-run
step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
step "all checks passed"
