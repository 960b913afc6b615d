#!/usr/bin/env bash
# Builds, idempotently and for offline use, the servers the end-to-end tests (pytest -m ogx) run:
#
#   .ogx-venv/          ogx 1.5.0 (Responses API, MCP tools), exactly tests/e2e/ogx-requirements.lock
#   .ogx-venv/tiktoken-cache/<sha1 of URL>
#                       tiktoken's cl100k_base (inline::sqlite-vec loads it at start-up; tiktoken
#                       would download it), rebuilt from npm's js-tiktoken, both hashes checked
#   .llamastack-venv/   llama-stack 0.6.1 (/v1/tool-runtime/invoke, X-LlamaStack-Provider-Data),
#                       exactly tests/e2e/llamastack-requirements.lock
#
# Both need Python >= 3.12 (found on PATH, in pyenv, or given as OGX_PYTHON=/path/to/python).
# A stamp file per venv makes a second run instant. Anything missing is an error (exit 1): the
# e2e tests must never be skipped for want of an environment.
#
# Usage: bash scripts/ogx-env.sh [ogx|llamastack]...   (default: both)
#        bash scripts/ogx-env.sh --relock              (re-resolve and rewrite both lock files)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OGX_LOCK=tests/e2e/ogx-requirements.lock
LS_LOCK=tests/e2e/llamastack-requirements.lock
# Top-level requirements the locks are resolved from (--relock).
OGX_TOP=("ogx==1.5.0" "sqlite-vec" "chardet" "pypdf>=6.16.2")
LS_TOP=("llama-stack==0.6.1" "llama-stack-api==0.6.1" "mcp<2")
# cl100k_base's ranks come from this npm tarball (sha256 of the .tgz as the registry serves it).
JS_TIKTOKEN=js-tiktoken@1.0.21
JS_TIKTOKEN_SHA256=3b1f24b185565ca9a8d8f51466dfc4f99d67f1f05bc009258710ddb7a8d810fa

die() { echo "ogx-env: ERROR: $*" >&2; exit 1; }
say() { echo "ogx-env: $*" >&2; }

# --- Python >= 3.12 --------------------------------------------------------------------------
py_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local c roots=()
  local -a cands=()
  [ -n "${OGX_PYTHON:-}" ] && { py_ok "$OGX_PYTHON" && { echo "$OGX_PYTHON"; return; }; die "OGX_PYTHON=$OGX_PYTHON is not a working Python >= 3.12"; }
  # pyenv shims on PATH fail unless the version is selected, so py_ok really runs each candidate.
  for c in python3.12 python3.13 python3.14; do
    command -v "$c" >/dev/null 2>&1 && cands+=("$(command -v "$c")")
  done
  [ -n "${PYENV_ROOT:-}" ] && roots+=("$PYENV_ROOT")
  roots+=("$HOME/.pyenv" /root/.pyenv /opt/pyenv /usr/local/pyenv)
  for r in "${roots[@]}"; do
    [ -d "$r/versions" ] || continue
    while IFS= read -r c; do cands+=("$c"); done < <(
      ls -d "$r"/versions/3.1[2-9]*/bin/python3.1[2-9] 2>/dev/null | sort -V)
  done
  cands+=(/usr/local/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.13 /usr/bin/python3.13)
  command -v python3 >/dev/null 2>&1 && cands+=("$(command -v python3)")
  for c in "${cands[@]}"; do
    [ -x "$c" ] && py_ok "$c" && { echo "$c"; return; }
  done
  die "no Python >= 3.12 found (tried python3.12/3.13 on PATH, pyenv versions under ${roots[*]}, /usr/bin). Install one (e.g. 'pyenv install 3.12') or set OGX_PYTHON=/path/to/python3.12"
}

# --- helpers ---------------------------------------------------------------------------------
PIP_LOG=$(mktemp "${TMPDIR:-/tmp}/ogx-env-pip.XXXXXX")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ogx-env.XXXXXX")
trap 'rm -rf "$WORK" "$PIP_LOG"' EXIT

pip_run() {  # pip_run VENV args... ; quiet on success, the log's tail on failure
  if ! "$1/bin/python" -m pip --disable-pip-version-check "${@:2}" >"$PIP_LOG" 2>&1; then
    grep -v 'is ignored: it is neither a file nor a directory' "$PIP_LOG" | tail -40 >&2
    die "pip ${*:2} failed in $1"
  fi
}

stamp_of() { { sha256sum "$@"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16; }

make_venv() {  # make_venv DIR: a venv of $PY's version (recreated if broken or another minor)
  local want have
  want=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  have=$("$1/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    rm -rf "$1"
    "$PY" -m venv "$1" || die "cannot create a venv in $1 with $PY"
  fi
  pip_run "$1" install -q --upgrade pip
}

install_lock() {  # install_lock VENV LOCK: exactly the locked set, then a consistency check
  pip_run "$1" install -q --no-deps -r "$2"
  pip_run "$1" check
}

# --- the tiktoken cache ----------------------------------------------------------------------
build_tiktoken_cache() {  # build_tiktoken_cache OUT_DIR
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch $JS_TIKTOKEN (cl100k_base ranks)"
  local tgz
  (cd "$WORK" && npm pack --silent "$JS_TIKTOKEN" >"$WORK/npm.out" 2>"$WORK/npm.err") \
    || { cat "$WORK/npm.err" >&2; die "npm pack $JS_TIKTOKEN failed"; }
  tgz="$WORK/$(tail -1 "$WORK/npm.out")"
  [ -f "$tgz" ] || die "npm pack produced no tarball ($(cat "$WORK/npm.out"))"
  echo "$JS_TIKTOKEN_SHA256  $tgz" | sha256sum -c --quiet - >/dev/null 2>&1 \
    || die "$JS_TIKTOKEN tarball sha256 $(sha256sum "$tgz" | cut -c1-64) != $JS_TIKTOKEN_SHA256"
  tar -xzf "$tgz" -C "$WORK" package/dist/ranks/cl100k_base.js \
    || die "$JS_TIKTOKEN has no dist/ranks/cl100k_base.js"
  "$PY" tests/e2e/tiktoken_cache.py "$WORK/package/dist/ranks/cl100k_base.js" "$1" >&2 \
    || die "could not rebuild cl100k_base"
}

# --- the environments ------------------------------------------------------------------------
build_ogx() {
  local venv=.ogx-venv want t0
  [ -f "$OGX_LOCK" ] || die "$OGX_LOCK missing"
  want=$(stamp_of "$OGX_LOCK" scripts/ogx-env.sh tests/e2e/tiktoken_cache.py)
  if [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$want" ] && [ -x "$venv/bin/ogx" ]; then
    return
  fi
  t0=$SECONDS
  say "building $venv with $("$PY" --version) from $OGX_LOCK"
  rm -f "$venv/.stamp"
  make_venv "$venv"
  install_lock "$venv" "$OGX_LOCK"
  build_tiktoken_cache "$venv/tiktoken-cache"
  TIKTOKEN_CACHE_DIR="$ROOT/$venv/tiktoken-cache" "$venv/bin/python" -c '
import ogx, sqlite_vec, chardet, pypdf, tiktoken
from importlib.metadata import version
assert version("ogx") == "1.5.0", version("ogx")
assert tiktoken.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
' || die "$venv self-check failed"
  echo "$want" >"$venv/.stamp"
  say "$venv ready in $((SECONDS - t0)) s"
}

build_llamastack() {
  local venv=.llamastack-venv want t0
  [ -f "$LS_LOCK" ] || die "$LS_LOCK missing"
  want=$(stamp_of "$LS_LOCK" scripts/ogx-env.sh)
  if [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$want" ] && [ -x "$venv/bin/llama" ]; then
    return
  fi
  t0=$SECONDS
  say "building $venv with $("$PY" --version) from $LS_LOCK"
  rm -f "$venv/.stamp"
  make_venv "$venv"
  install_lock "$venv" "$LS_LOCK"
  "$venv/bin/python" -c '
from importlib.metadata import version
assert version("llama-stack") == "0.6.1", version("llama-stack")
assert version("mcp").startswith("1."), version("mcp")
import llama_stack.providers.remote.tool_runtime.model_context_protocol.model_context_protocol
' || die "$venv self-check failed"
  echo "$want" >"$venv/.stamp"
  say "$venv ready in $((SECONDS - t0)) s"
}

relock() {  # relock LOCK HEADER TOP...: resolve TOP in a scratch venv, freeze into LOCK
  local lock=$1 header=$2
  shift 2
  make_venv "$WORK/relock"
  pip_run "$WORK/relock" install -q "$@"
  { printf '%s\n' "$header"; "$WORK/relock/bin/python" -m pip freeze --disable-pip-version-check; } >"$lock"
  rm -rf "$WORK/relock"
  say "wrote $lock"
}

# --- main ------------------------------------------------------------------------------------
exec 9>"${TMPDIR:-/tmp}/mcpproxy-ogx-env-$(echo "$ROOT" | sha1sum | cut -c1-8).lock"
command -v flock >/dev/null 2>&1 && flock 9

PY=$(find_python)

if [ "${1:-}" = "--relock" ]; then
  relock "$OGX_LOCK" "# Exact versions for .ogx-venv (scripts/ogx-env.sh). Top level: ${OGX_TOP[*]}
# (ogx plus what the providers of the e2e config import: inline::sqlite-vec needs the rest).
# Regenerate with: bash scripts/ogx-env.sh --relock" "${OGX_TOP[@]}"
  relock "$LS_LOCK" "# Exact versions for .llamastack-venv (scripts/ogx-env.sh). Top level: ${LS_TOP[*]}
# (llama-stack leaves llama-stack-api unpinned, which resolves to 0.7.x; 0.6 uses the mcp 1.x API).
# Regenerate with: bash scripts/ogx-env.sh --relock" "${LS_TOP[@]}"
  exit 0
fi

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(ogx llamastack)
for t in "${targets[@]}"; do
  case "$t" in
    ogx) build_ogx ;;
    llamastack) build_llamastack ;;
    *) die "unknown target '$t' (ogx, llamastack, --relock)" ;;
  esac
done
