#!/usr/bin/env bash
# Sets up everything varco-labeler needs on a fresh machine, idempotently:
#   a virtualenv in .venv, torch/torchvision, the package with its extras, and a Redis server.
#   and Label Studio 1.23.2 in .ls-venv for the end-to-end tests (VARCO_SKIP_E2E=1 skips it).
# Environment: PYTHON (interpreter, default python3.11 or python3), EXTRAS (default "worker,train,dev"),
#   TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1"), REDIS_URL (default redis://127.0.0.1:6379/0).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
EXTRAS=${EXTRAS:-worker,train,dev}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency spec changed; a stamp records what is installed.
stamp=".venv/.varco-installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  say "installing Python packages (extras: $EXTRAS)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  case ",$EXTRAS," in
    *,worker,*)
      say "installing $TORCH_SPEC"
      # shellcheck disable=SC2086
      .venv/bin/python -m pip install --quiet $TORCH_SPEC ;;
  esac
  .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
  rm -f .venv/.varco-installed-*
  touch "$stamp"
else
  say "Python packages up to date"
fi

# A real Label Studio in its own virtualenv (it pins old rq/redis), for tests/e2e.
if [ "${VARCO_SKIP_E2E:-0}" != 1 ]; then
  say "Label Studio 1.23.2 for the end-to-end tests (.ls-venv)"
  bash scripts/install_label_studio.sh >/dev/null
  # A real browser for the editor test (tests/e2e/test_e2e_editor.py): Debian's chromium, driven
  # by Playwright's Python package (dev extra) with executable_path; no browser download.
  if ! command -v chromium >/dev/null; then
    say "installing chromium with apt (for the browser test)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi

# A Redis server for the queue: use the one at REDIS_URL, or start a local one.
redis_hostport=${REDIS_URL#*://}
redis_hostport=${redis_hostport#*@}
redis_hostport=${redis_hostport%%/*}
redis_host=${redis_hostport%:*}
redis_port=${redis_hostport##*:}
[ "$redis_port" = "$redis_hostport" ] && redis_port=6379
if .venv/bin/python - "$REDIS_URL" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).ping()
PY
then
  say "Redis answers at $redis_host:$redis_port"
else
  case "$redis_host" in
    127.0.0.1|localhost|::1) ;;
    *) echo "Redis at $REDIS_URL does not answer, and it is not local: start it there." >&2; exit 1 ;;
  esac
  if ! command -v redis-server >/dev/null; then
    say "installing redis-server with apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  say "starting redis-server on port $redis_port"
  mkdir -p .run
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$PWD/.run" --logfile "$PWD/.run/redis.log"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
