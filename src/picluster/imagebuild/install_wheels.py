"""Install wheel files into the running interpreter's scheme, without tag checks.

Run by the native twin's ``/opt/picluster/bin/python`` (see venv.py) with the
``installer`` wheel on ``sys.path``. pip would refuse the aarch64 wheels on an
amd64 interpreter; ``installer`` only unpacks, writes console scripts with this
venv's shebang, records RECORD/INSTALLER, and byte-compiles at native speed.
Usage: python install_wheels.py WHEEL...
"""

from __future__ import annotations

import sys
import sysconfig

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile


def main(wheels: list[str]) -> int:
    scheme = sysconfig.get_paths()
    paths = {name: scheme[name] for name in ("purelib", "platlib", "scripts", "data")}
    paths["headers"] = scheme["include"]
    destination = SchemeDictionaryDestination(
        paths,
        interpreter=sys.executable,
        script_kind="posix",
        bytecode_optimization_levels=(0,),
    )
    for wheel in wheels:
        with WheelFile.open(wheel) as source:
            install(source, destination, additional_metadata={"INSTALLER": b"picluster-build\n"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
