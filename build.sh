#!/usr/bin/env bash
# Build the picluster image: `sudo ./build.sh [--base raspios|debian|auto] [-c extra-config]`.
# A thin entry: it makes the build venv (./.venv) if needed and hands over to
# Python (src/picluster/imagebuild/). `./build.sh --help` lists the commands.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv"
if [[ ! -x "${venv}/bin/python" ]]; then
    echo "build.sh: creating the build venv in ${venv}" >&2
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet -e "${here}"
fi
exec "${venv}/bin/python" -m picluster.imagebuild "$@"
