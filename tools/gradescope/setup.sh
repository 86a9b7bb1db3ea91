#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (Ubuntu base image;
# pick one whose python3 is 3.11 or newer, e.g. Ubuntu 24.04). It installs the course's pinned
# packages and metalib into a virtual environment that every uid can run, because the grader
# runs each notebook as an unprivileged, unused uid.
set -euo pipefail

source="${SOURCE_DIR:-/autograder/source}"
venv="${METALIB_VENV:-/opt/metalib/venv}"

if ! python3 -m venv --help >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
fi
python3 -c 'import sys; assert sys.version_info >= (3, 11), f"Python 3.11+ needed, this image has {sys.version}"'
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first. On Linux the plain PyPI wheel pulls several GB of CUDA libraries; to take a CPU-only
# build instead, set TORCH_INDEX_URL (in the autograder's environment) to a CPU wheel index.
torch_pin="$(grep -E '^torch==' "$source/requirements.lock")"
"$venv/bin/python" -m pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$torch_pin"
"$venv/bin/python" -m pip install --quiet -r "$source/requirements.lock"
"$venv/bin/python" -m pip install --quiet --no-deps "$source"
chmod -R a+rX "$(dirname "$venv")"
# Fail the image build now, not every student's grading later, if something is missing.
"$venv/bin/python" -c "import torch, IPython, matplotlib, metalib.grading.sandbox, metalib.grading.runner"
echo "metalib autograder installed in $venv"
