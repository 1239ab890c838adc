#!/usr/bin/env bash
# Install Ray into ./.venv for `ponder eval --ray` (idempotent; a no-op when ray imports).
#
# Ray must not move anything ponder already has: every installed package is pinned to its
# current version with a constraints file, so pip can only add packages (a dry run first
# says what it would do, and we refuse if it would change torch). Run scripts/install.sh
# first.
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=.venv/bin/python
[ -x "$VPY" ] || { echo "install_ray: no .venv; run scripts/install.sh first" >&2; exit 1; }
if "$VPY" -c "import ray" 2>/dev/null; then
  echo "install_ray: ray $("$VPY" -c 'import ray; print(ray.__version__)') already installed"
  exit 0
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# Pin what is installed (editable and URL installs cannot be constraints: leave them out).
"$VPY" -m pip freeze --disable-pip-version-check 2>/dev/null | grep -E '^[A-Za-z0-9_.-]+==' \
  > "$constraints"
plan=$("$VPY" -m pip install --disable-pip-version-check --dry-run -c "$constraints" "ray" 2>&1 |
  grep -v "^WARNING: Location") || { echo "$plan" >&2; echo "install_ray: pip cannot add ray" \
  "without changing installed packages (see above)" >&2; exit 1; }
would=$(echo "$plan" | grep '^Would install' || true)
echo "install_ray: ${would:-nothing to install}"
if echo "$would" | grep -qE '(^| )torch-'; then
  echo "install_ray: refusing, pip would replace torch" >&2
  exit 1
fi
"$VPY" -m pip install --disable-pip-version-check -q -c "$constraints" "ray" 2>&1 |
  grep -v "^WARNING: Location" || true
"$VPY" -c "import ray; print('install_ray: ray', ray.__version__)" ||
  { echo "install_ray: ray failed to import" >&2; exit 1; }
