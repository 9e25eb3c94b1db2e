#!/usr/bin/env bash
# The check to run before resolving any issue: does HEAD install and work on a machine that has
# nothing of this checkout? (`make fresh-check`; `make fresh-check FULL=1` runs all of `make test`.)
#
# 1. clones the committed HEAD (never the working tree) into a new temporary folder;
# 2. makes a new venv there and installs torch the way the Makefile does, through this machine's
#    own pip configuration (a user's machine has its own way to torch: the CPU wheel, a CUDA index);
# 3. runs `make install` with every pip configuration file ignored (PIP_CONFIG_FILE=/dev/null),
#    PIP_FIND_LINKS unset and pip's cache off, so each locked package comes from the package
#    index by `name==version`, never from a wheel left on this machine;
# 4. runs a smoke test there: the lock test, then `make demo`'s model served by a real server and
#    asked for six held-out phantoms through MONAI Label's client (python -m training demo-check).
#
# Nothing in the working tree is read or written; the temporary folder is removed unless KEEP=1.
set -euo pipefail

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
head=$(git -C "$repo" rev-parse --short HEAD)
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "note: uncommitted changes are NOT part of this check (it clones HEAD $head)" >&2
fi
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sonovlm-fresh-XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "kept: $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT

start=$(date +%s)
echo "== fresh clone of HEAD $head into $scratch/sonovlm"
git clone --quiet --no-hardlinks "file://$repo" "$scratch/sonovlm"
cd "$scratch/sonovlm"
if grep -rEn '(file:|@ */|^-e |^\.|^/)' requirements/lock.txt; then
    echo "error: requirements/lock.txt points at a local path (lines above)" >&2
    exit 1
fi

echo "== venv and torch (this machine's pip configuration)"
"$python" -m venv .venv
.venv/bin/python -m pip install --disable-pip-version-check -q "$(sed -n 's/^TORCH_SPEC ?= //p' Makefile)"

echo "== make install from the package index only (pip configuration, find-links and cache off)"
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null PIP_NO_CACHE_DIR=1 make install PYTHON="$python"

echo "== smoke test"
if [ "${FULL:-0}" = 1 ]; then
    make test
else
    .venv/bin/python -m pytest -q -p no:cacheprovider tests/requirements
    # the packaged demo model served by a real server, six held-out phantoms through MONAI Label's client
    .venv/bin/python -m training demo-check --count 6
fi
echo "fresh-check passed for HEAD $head in $(( $(date +%s) - start )) s"
