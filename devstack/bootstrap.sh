#!/usr/bin/env bash
# Installs what the project needs on a fresh machine, idempotently and quickly
# when nothing changed: a virtualenv with the project and its test extras, the
# separate LocalStack virtualenv, and (on CI, as root) the Debian packages the
# tests use. Sourced by devstack/run and devstack/test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
mkdir -p .devstack

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".devstack/pip-$(cat pyproject.toml devstack/pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # The project, and the development stack as its own distribution (the dev commands).
  .venv/bin/python -m pip install -q -e '.[test]' -e ./devstack
  rm -f .devstack/pip-* && touch "$stamp"
fi

# clamd (antivirus tests) on CI; a developer without it sees those tests skipped.
if [ "${CI:-}" = "true" ] && ! command -v clamd >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clamav-daemon >/dev/null
fi
# Chromium (the /docs browser test, tests/clients/test_docs_page.py) on CI; a
# developer without it sees that test skipped.
if [ "${CI:-}" = "true" ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# PostgreSQL and Redis are the machine's own services; start them if stopped.
if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ]; then
  pg_isready -q -h 127.0.0.1 2>/dev/null || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi

.venv/bin/python -c "from devstack.localstack import ensure_installed; ensure_installed()"
