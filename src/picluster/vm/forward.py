"""A TCP port of a VM, reachable on the host's loopback, without touching host interfaces.

Two small relays meet at a Unix socket (the file system is shared across
network namespaces): ``inner`` runs inside the LAN's namespace and connects
each stream to the VM; ``outer`` listens on 127.0.0.1 of the host.

    python -m picluster.vm.forward inner --unix S --to 10.213.0.10:8888
    python -m picluster.vm.forward outer --unix S --listen 127.0.0.1:8888
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _splice(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, connect: object
) -> None:
    try:
        upstream_r, upstream_w = await connect()  # type: ignore[operator]
    except OSError:
        client_w.close()
        return
    await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))


async def inner(unix: str, host: str, port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _splice(r, w, lambda: asyncio.open_connection(host, port))

    server = await asyncio.start_unix_server(handle, path=unix)
    async with server:
        await server.serve_forever()


async def outer(unix: str, host: str, port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _splice(r, w, lambda: asyncio.open_unix_connection(unix))

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m picluster.vm.forward", description=__doc__)
    parser.add_argument("side", choices=("inner", "outer"))
    parser.add_argument("--unix", required=True)
    parser.add_argument("--to", help="inner: VM address:port")
    parser.add_argument("--listen", help="outer: 127.0.0.1:port")
    args = parser.parse_args(argv)
    target = args.to if args.side == "inner" else args.listen
    if not target:
        parser.error("inner needs --to, outer needs --listen")
    host, _, port = target.rpartition(":")
    coro = inner if args.side == "inner" else outer
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro(args.unix, host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
