"""python-zeroconf's socket errors reach the journal as one line, never a traceback."""

import logging

from picluster.mdns_log import quiet_zeroconf


def test_a_zeroconf_socket_error_is_one_clear_line(caplog):
    quiet_zeroconf()
    quiet_zeroconf()  # idempotent: one filter
    logger = logging.getLogger("zeroconf")
    assert len(logger.filters) == 1
    try:
        raise OSError(1, "Operation not permitted")
    except OSError as exc:
        logger.warning("Error with socket %s): %s", 7, exc, exc_info=exc)
    (record,) = caplog.records
    assert record.exc_info is None and "Traceback" not in caplog.text
    assert "multicast may be blocked" in caplog.text and "picluster doctor" in caplog.text
    assert "Operation not permitted" in caplog.text
