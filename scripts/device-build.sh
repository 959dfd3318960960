#!/usr/bin/env bash
# Builds, here, the release binaries that scripts/device-check.sh runs on a
# GPU machine, strips them and copies them into the git-ignored device/
# folder (with a MANIFEST), and checks that device/ stays under 64 MiB (what
# a device run may carry). Nothing is built on the device machine itself.
#
#   scripts/device-build.sh            # -> device/{suite,accelerated-cuda,...,overhead-report}
#
# The binaries link libtorch dynamically: on the device, device-check.sh
# points LD_LIBRARY_PATH at the torch package there (it must be the same
# libtorch, torch 2.11.0, that tch 0.24 was built against here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
limit_mib=64
dest=device
mkdir -p "$dest"

step() { printf '\n==> %s\n' "$*"; }

# `cargo ... --message-format=json` -> the executable of the named targets
executables() {
    python3 -c '
import json, sys
wanted = set(sys.argv[1:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in wanted:
        print(m["target"]["name"], m["executable"])
' "$@"
}

step "cargo build --release (overhead-report)"
cargo build --release -p clae-benches --bin overhead-report
step "cargo test --release --no-run (conformance suite, accelerated CUDA tests)"
list=$(mktemp)
trap 'rm -f "$list"' EXIT
cargo test --release -p clae-conformance --test suite --no-run --message-format=json \
    | executables suite >>"$list"
cargo test --release -p clae-accelerated --test cuda --test cuda_loading --test device --no-run \
    --message-format=json | executables cuda cuda_loading device >>"$list"

copy() { # copy NAME SOURCE
    cp -f "$2" "$dest/$1"
    chmod u+w "$dest/$1"
    strip "$dest/$1"
    printf '%s\t%s\n' "$1" "$2" >>"$dest/MANIFEST"
}
: >"$dest/MANIFEST"
copy overhead-report target/release/overhead-report
while read -r name exe; do
    case "$name" in
        suite) copy suite "$exe" ;;
        *) copy "accelerated-$name" "$exe" ;;
    esac
done <"$list"

# The reference's OpenBLAS (Debian's libopenblas-dev here) and its Fortran
# runtime travel along, in device/lib: a GPU machine may not have them.
# device-check.sh puts device/lib on LD_LIBRARY_PATH after torch's lib/.
mkdir -p "$dest/lib"
for lib in $(ldd target/release/overhead-report | awk '/libopenblas/ {print $3}'); do
    for dep in "$lib" $(ldd "$lib" | awk '/libgfortran|libquadmath/ {print $3}'); do
        cp -fL "$dep" "$dest/lib/"
        chmod u+w "$dest/lib/$(basename "$dep")"
        strip --strip-unneeded "$dest/lib/$(basename "$dep")" 2>/dev/null || true
        printf 'lib/%s\t%s\n' "$(basename "$dep")" "$dep" >>"$dest/MANIFEST"
    done
done

for want in suite accelerated-cuda accelerated-cuda_loading accelerated-device overhead-report; do
    if [[ ! -x "$dest/$want" ]]; then
        echo "device-build: $want was not built" >&2
        exit 1
    fi
done
bytes=$(du -sb "$dest" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
step "device/: ${mib} MiB"
ls -l "$dest"
if (( bytes > limit_mib * 1048576 )); then
    echo "device-build: device/ is ${mib} MiB, over the ${limit_mib} MiB a device run may carry" >&2
    exit 1
fi
echo "ok: run on the GPU machine with: scripts/device-check.sh   (carry: device)"
