"""``python -m picluster.ipcontroller``: ipyparallel's ipcontroller, minus ghosts.

ipyparallel 9's ``restore_engines`` re-creates every engine of the saved
state as *registered* before any of them has said a word: an engine whose
host died while the controller was down is listed forever (its heart never
beats, so the heart monitor never even starts counting its misses), and the
task scheduler hands it work that never comes back (issue 14: a 200-task map
stuck at 198/200).

Here a restored engine is only *pending*, exactly like an engine that has just
sent its registration request: it is listed, and given work, from its first
heartbeat on (an engine that is alive beats within one heartbeat period of
the hub starting), and it is purged after ``RESTORE_GRACE_S`` seconds of
silence. Nothing else of the hub changes; everything else is the stock
``ipyparallel.controller`` entry point with the arguments the agent gives it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from picluster import daskcluster

RESTORE_GRACE_S = 20
"""Seconds a restored engine has to send its first heartbeat before it is purged.

An engine that is alive reconnects (ZeroMQ retries every 0.1 s) and beats at
the hub's next 0.5 s tick; a loaded Pi 3 on Wi-Fi stalls for seconds, not
tens of them. Issue 14 asks for ghosts gone within 30 s of the controller's start."""


def _load_engine_state(hub: Any) -> None:
    """``Hub._load_engine_state``, but each restored engine waits for its heart."""
    from ipyparallel.controller.hub import EngineConnector

    path = Path(hub.engine_state_file or "")
    if not hub.engine_state_file or not path.exists():
        return
    try:
        state = json.loads(path.read_text())
        engines = {int(eid): str(uuid) for eid, uuid in state["engines"].items()}
        next_id = int(state["next_id"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        hub.log.warning("not restoring engines: %s is unreadable (%s)", path, exc)
        return
    hub.log.info(
        "restoring %d engine(s) from %s: each is listed from its first heartbeat, "
        "purged after %d s without one",
        len(engines),
        path,
        RESTORE_GRACE_S,
    )
    for eid, uuid in engines.items():
        heart = uuid.encode("utf8")
        hub.incoming_registrations[heart] = EngineConnector(
            id=eid,
            uuid=uuid,
            ident=heart,
            stallback=hub.loop.call_later(RESTORE_GRACE_S, _purge_restored, hub, heart),
        )
    hub._idcounter = max(next_id, hub._idcounter)


def _purge_restored(hub: Any, heart: bytes) -> None:
    hub.monitor.flush()  # its first heartbeat may be waiting to be handled
    ec = hub.incoming_registrations.pop(heart, None)
    if ec is not None:
        hub.log.warning(
            "engine %d (%s) was restored but never sent a heartbeat in %d s: purged "
            "(its host is gone)",
            ec.id,
            ec.uuid,
            RESTORE_GRACE_S,
        )
        hub._save_engine_state()


def patch_hub() -> None:
    from ipyparallel.controller.hub import Hub

    Hub._load_engine_state = _load_engine_state


def main() -> None:
    patch_hub()
    daskcluster.patch_hub(sys.argv[1:])
    from ipyparallel.controller.app import main as ipcontroller_main

    ipcontroller_main()


if __name__ == "__main__":
    main()
