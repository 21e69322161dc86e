#!/usr/bin/env bash
# Creates (once) a Python venv under target/pyenv with the official `openai` client pinned, for
# the server's client test (crates/bitnet-cli/tests/serve_openai.rs, run when BITNET_TEST_PYTHON
# names a python that can `import openai`). Idempotent: an existing venv with the pinned version
# is reused. The last line printed is the venv's python path.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.57.0
venv=target/pyenv
py="$PWD/$venv/bin/python"

if [ -x "$py" ] && "$py" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  echo "$py"
  exit 0
fi
python3 -m venv "$venv" >&2
"$py" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
"$py" -c "import openai; print('openai', openai.__version__)" >&2
echo "$py"
