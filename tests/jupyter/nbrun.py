"""Execute one notebook with nbclient and save it with its outputs.

Runs inside the controller's network namespace, so the kernel it starts sees
the controller on 127.0.0.1 exactly as a kernel under JupyterLab on the Pi does.
Usage: python nbrun.py IN.ipynb OUT.ipynb
"""

import sys
import time

import nbformat
from nbclient import NotebookClient


def main(src: str, dest: str) -> int:
    nb = nbformat.read(src, as_version=4)
    tic = time.monotonic()
    client = NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, dest)
    print(f"executed {src} in {time.monotonic() - tic:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
