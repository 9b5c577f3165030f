#!/usr/bin/env bash
# Build the picluster image: `sudo ./build.sh [--base raspios|debian|auto] [-c extra-config]`.
# A thin entry: it makes the build venv (./.venv) if needed and hands over to
# `picluster` (src/picluster/cli.py), whose build commands are `build` (the
# default: no command, or options only), `lock` and `boot`. `./build.sh --help`
# lists every command.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv"
if [[ ! -x "${venv}/bin/python" ]]; then
    echo "build.sh: creating the build venv in ${venv}" >&2
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet -e "${here}"
fi
if [[ $# -eq 0 || ($1 == -* && $1 != -h && $1 != --help && $1 != --version) ]]; then
    set -- build "$@"
fi
exec "${venv}/bin/python" -m picluster "$@"
