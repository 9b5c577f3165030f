"""A minimal DHCP client (DISCOVER, OFFER, REQUEST, ACK; RFC 2131) for the LAN tests.

Run inside a network namespace whose only interface has no address yet:

    python -m tests.boot.dhcp_client IFACE MAC HOSTNAME

prints ``<address>`` on an ACK and exits 0; exits 1 with the reason otherwise.
It asks for broadcast replies (the interface has no address to receive unicast on).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import time

COOKIE = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6


def packet(xid: int, mac: bytes, options: list[tuple[int, bytes]]) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                       b"", b"", b"", b"", mac, b"", b"")  # fmt: skip
    opts = b"".join(bytes([code, len(value)]) + value for code, value in options)
    return head + COOKIE + opts + b"\xff"


def parse(data: bytes) -> tuple[int, str, dict[int, bytes]]:
    xid = struct.unpack("!I", data[4:8])[0]
    yiaddr = str(ipaddress.IPv4Address(data[16:20]))
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, length = data[i], data[i + 1]
        options[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    return xid, yiaddr, options


def exchange(sock: socket.socket, out: bytes, xid: int, want: int, deadline: float) -> tuple:
    end = time.monotonic() + deadline
    sock.sendto(out, ("255.255.255.255", 67))
    while time.monotonic() < end:
        sock.settimeout(max(0.1, end - time.monotonic()))
        try:
            data, _ = sock.recvfrom(4096)
        except TimeoutError:
            break
        got_xid, yiaddr, options = parse(data)
        kind = options.get(53, b"\0")[0]
        if got_xid == xid and kind in (want, NAK):
            return kind, yiaddr, options
    raise SystemExit(f"no DHCP answer of type {want} within {deadline:.0f} s")


def main(iface: str, mac_text: str, hostname: str) -> int:
    mac = bytes.fromhex(mac_text.replace(":", ""))
    xid = int.from_bytes(os.urandom(4), "big")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    sock.bind(("0.0.0.0", 68))
    name = (12, hostname.encode())
    _, offered, options = exchange(sock, packet(xid, mac, [(53, bytes([DISCOVER])), name]),
                                   xid, OFFER, 10)  # fmt: skip
    request = [(53, bytes([REQUEST])), (50, ipaddress.IPv4Address(offered).packed),
               (54, options[54]), name]  # fmt: skip
    kind, address, _ = exchange(sock, packet(xid, mac, request), xid, ACK, 10)
    if kind != ACK:
        print(f"NAK for {offered}", file=sys.stderr)
        return 1
    print(address)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
