#!/usr/bin/env bash
# Build the picluster image: `sudo ./build.sh [--base raspios|debian|auto] [-c extra-config]`.
# A thin entry: it makes the build venv (./.venv) if needed and hands over to
# `picluster` (src/picluster/cli.py), whose build commands are `build` (the
# default: no command, or options only), `lock` and `boot`. `./build.sh --help`
# lists every command.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.venv"
# The venv must hold picluster installed from this pyproject.toml: an interrupted
# first run (Ctrl-C during pip) leaves a python without it, which is repaired here.
stamp="${venv}/.picluster-build-inputs"
want="$(sha256sum "${here}/pyproject.toml")"
want="${want%% *}"
if [[ ! -x "${venv}/bin/python" ]]; then
    echo "build.sh: creating the build venv in ${venv}" >&2
elif [[ "$(cat "${stamp}" 2>/dev/null || true)" != "${want}" ]] \
    || ! "${venv}/bin/python" -c 'import picluster.cli' 2>/dev/null; then
    echo "build.sh: repairing the build venv in ${venv} (picluster missing, or" \
        "pyproject.toml changed since it was installed)" >&2
else
    want=""
fi
if [[ -n "${want}" ]]; then
    rm -f "${stamp}"
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install --quiet -e "${here}"
    echo "${want}" > "${stamp}"
fi
if [[ $# -eq 0 || ($1 == -* && $1 != -h && $1 != --help && $1 != --version) ]]; then
    set -- build "$@"
fi
exec "${venv}/bin/python" -m picluster "$@"
