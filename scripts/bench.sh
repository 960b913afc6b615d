#!/usr/bin/env bash
# The one benchmark command (issue 7): installs what the benchmark needs, idempotently, then runs it.
#   bash scripts/bench.sh            full run (~14 min): table, bench/RESULTS.md, bench/PROFILE.md
#   bash scripts/bench.sh --quick    short run (~4 min), same outputs
#   bash scripts/bench.sh --soak [MINUTES]   bounded steady-rate soak (default 5), bench/SOAK.md
# Needs: the project's .venv and the test OAuth server's node packages (scripts/bootstrap.sh),
# Debian's nginx-light (the reference proxy; skipped if it cannot be installed), wrk (the load
# generator for the highest rates; the Python client stands in without it) and valgrind
# (instruction counts of the relay's Python path; skipped without it), and py-spy (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || need+=(nginx-light)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bench: installing ${need[*]} from Debian's packages" >&2
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } \
      || echo "bench: warning: could not install ${need[*]}; the run goes on without" >&2
  else
    echo "bench: warning: ${need[*]} missing (sudo apt-get install -y ${need[*]}); the run goes on without" >&2
  fi
fi
if [ ! -x .venv/bin/py-spy ]; then
  .venv/bin/python -m pip install -q py-spy >/dev/null 2>&1 \
    || echo "bench: warning: could not install py-spy; no profile" >&2
fi

export BENCH_COMMAND="bash scripts/bench.sh${*:+ $*}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python -m bench.run "$@"
