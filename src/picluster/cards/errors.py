"""The one error of ``picluster flash``, raised by every step of it."""

from __future__ import annotations

from picluster.errors import PiclusterError


class FlashError(PiclusterError):
    """The device is refused or the write failed; ``str()`` says why and what to do."""
