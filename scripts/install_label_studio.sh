#!/usr/bin/env bash
# Installs a real Label Studio into its OWN virtualenv, idempotently, for the end-to-end tests and
# for trying the backend locally. Label Studio pins rq<2.7 and redis<5.3, so it must not share
# .venv with varco-labeler.
# Environment:
#   LS_VENV     where the virtualenv goes (default: .ls-venv; relative to the repository root)
#   LS_VERSION  the Label Studio version (default 1.23.2, the version the backend is tested against)
#   PYTHON      the interpreter for a new virtualenv (default: the first of python3.11, python3.12,
#               python3 that runs; verified with 3.11)
# Prints the path of the label-studio executable as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

LS_VERSION=${LS_VERSION:-1.23.2}
LS_VENV=${LS_VENV:-.ls-venv}
case "$LS_VENV" in /*) ;; *) LS_VENV=$PWD/$LS_VENV ;; esac
if [ -z "${PYTHON:-}" ]; then
  # pyenv shims exist for versions that are not selected: take the first interpreter that runs.
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import venv' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
: "${PYTHON:?no working python3 found: set PYTHON}"

say() { printf '\033[1m[label-studio]\033[0m %s\n' "$*" >&2; }

installed_version() {
  [ -x "$LS_VENV/bin/python" ] || return 1
  "$LS_VENV/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("label-studio"))
PY
}

if [ "$(installed_version || true)" = "$LS_VERSION" ] && [ -x "$LS_VENV/bin/label-studio" ]; then
  say "label-studio $LS_VERSION already installed in $LS_VENV"
else
  start=$(date +%s)
  if [ ! -x "$LS_VENV/bin/python" ]; then
    say "creating $LS_VENV with $PYTHON"
    "$PYTHON" -m venv "$LS_VENV"
  fi
  say "installing label-studio==$LS_VERSION into $LS_VENV (about 1 GB, usually under a minute)"
  # Some machines' pip configs list find-links folders that do not exist; pip warns once per
  # package about them. Drop only those lines; real errors still show.
  quiet_pip() {
    "$LS_VENV/bin/python" -m pip --disable-pip-version-check install --quiet "$@" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  }
  quiet_pip --upgrade pip
  quiet_pip "label-studio==$LS_VERSION"
  got=$(installed_version || true)
  if [ "$got" != "$LS_VERSION" ]; then
    echo "label-studio install failed: found '${got:-nothing}' in $LS_VENV, wanted $LS_VERSION" >&2
    exit 1
  fi
  say "installed label-studio $LS_VERSION in $(($(date +%s) - start)) s"
fi
echo "$LS_VENV/bin/label-studio"
