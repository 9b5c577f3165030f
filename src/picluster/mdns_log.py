"""python-zeroconf's socket errors as one clear line, never a traceback.

Where multicast is blocked (some Wi-Fi networks, a firewall) or an address
has just gone away, every send on a zeroconf socket fails; python-zeroconf
logs the first failure of each socket as a warning *with* its traceback. That
reads like a crash in the journal. This filter keeps the warning, drops the
traceback, and says what it means and what to run.
"""

from __future__ import annotations

import logging

HINT = (
    "mDNS cannot use this network: multicast may be blocked here, or this host's "
    "address just changed. `picluster doctor` tests an mDNS round trip and names the fix"
)


class _OneLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.exc_text:
            error = record.exc_info[1] if record.exc_info else None
            detail = record.getMessage()
            if error is not None and str(error) not in detail:
                detail = f"{detail}: {error}"
            record.msg, record.args = "%s (%s)", (HINT, detail)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_zeroconf() -> None:
    """Install the filter on python-zeroconf's logger (idempotent)."""
    logger = logging.getLogger("zeroconf")
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())
