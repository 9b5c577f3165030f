"""ipyparallel connection dicts built from an address, a base port and the key.

``ipcontroller --ports=B-B+29`` hands out ports in a fixed order (measured with
ipyparallel 9.2; ``tests/unit/test_connection.py`` checks it against a real
ipcontroller), so a node that knows the controller's address, the base port
and the cluster secret can build exactly the dict ipcontroller writes to
``ipcontroller-engine.json`` / ``ipcontroller-client.json``: no file has to be
copied between Pis.
"""

from __future__ import annotations

import json
from typing import Any

from picluster.config import PORTS_USED
from picluster.secret import Keys

ENGINE_PORTS = {
    "registration": 0,
    "control": 1,
    "mux": 2,
    "task": 3,
    "iopub": 4,
    "hb_ping": 5,
    "hb_pong": 6,
}
ENGINE_BROADCAST = (7, 8)
CLIENT_PORTS = {
    "registration": 0,
    "control": 9,
    "mux": 10,
    "task": 11,
    "iopub": 12,
    "notification": 13,
    "broadcast": 14,
}
# The last two of the range: ipcontroller draws its ports from the front of
# --ports, the 15 above and its internal loopback ones after them (B..B+17 with
# the default broadcast depth, measured with ipyparallel 9.2).
DASK_PORTS = {
    "scheduler": PORTS_USED - 2,  # tls://, on the controller's LAN address (daskcluster)
    "dashboard": PORTS_USED - 1,  # http on loopback only; JupyterLab's /proxy/<port>/status
}


def ports_argument(base_port: int) -> str:
    return f"{base_port}-{base_port + PORTS_USED - 1}"


def _common(keys: Keys, location: str, curve: bool) -> dict[str, Any]:
    return {
        # With CurveZMQ, ipyparallel turns message signing off (empty key).
        "key": "" if curve else keys.ipp_key,
        "curve_serverkey": keys.curve().server_public.decode("ascii") if curve else None,
        "location": location,
        "pack": "json",
        "unpack": "json",
        "signature_scheme": "hmac-sha256",
    }


def engine_info(
    address: str, base_port: int, keys: Keys, *, curve: bool, location: str = ""
) -> dict[str, Any]:
    info: dict[str, Any] = {"ssh": "", "interface": f"tcp://{address}"}
    info.update({name: base_port + off for name, off in ENGINE_PORTS.items()})
    info["broadcast"] = [base_port + off for off in ENGINE_BROADCAST]
    info.update(_common(keys, location or address, curve))
    return info


def client_info(
    address: str, base_port: int, keys: Keys, *, curve: bool, location: str = ""
) -> dict[str, Any]:
    info: dict[str, Any] = {"ssh": "", "interface": f"tcp://{address}"}
    for name, off in CLIENT_PORTS.items():
        info[name] = base_port + off
        if name == "task":
            info["task_scheme"] = "leastload"
    info.update(_common(keys, location or address, curve))
    return info


def dumps(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2) + "\n"


def client_environment(keys: Keys, curve: bool) -> dict[str, str]:
    """Environment a Client needs besides the dict (CurveZMQ client key pair)."""
    if not curve:
        return {}
    pair = keys.curve()
    return {
        "IPP_CURVE_SECRETKEY": pair.client_secret.decode("ascii"),
        "IPP_CURVE_PUBLICKEY": pair.client_public.decode("ascii"),
    }
