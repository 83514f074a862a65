"""A TCP proxy that breaks the network on command, for fault tests.

    python tests/faults/net_proxy.py UPSTREAM_HOST:PORT

It listens on a free loopback port, prints ``proxy listening on 127.0.0.1:PORT`` and forwards
every connection to UPSTREAM. It reads commands on stdin, one per line, and acknowledges each
on stdout with ``proxy: COMMAND done (...)``:

``blackhole``  stop forwarding in both directions but keep every TCP connection open (new
               ones are accepted and stalled too): a network partition neither side is told
               about — no FIN, no RST, the bytes wait in the sockets like TCP retransmissions
``cut``        reset (RST) every open connection, and every new one until ``restore``: the
               link is down and both ends know it
``reset``      reset every open connection once; new connections are forwarded
``restore``    forward again; bytes held by ``blackhole`` are delivered, in order

It also prints ``proxy: connection N open`` / ``proxy: connection N closed`` and exits when
stdin closes (so it never outlives the test that started it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import sys


def say(text: str) -> None:
    print(f"proxy: {text}", flush=True)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.refusing = False
        self.ids = itertools.count(1)
        self.open: dict[int, tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self.ids)
        if self.refusing:
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            say(f"connection {conn} refused upstream: {exc}")
            _rst(writer)
            return
        self.open[conn] = (writer, up_writer)
        say(f"connection {conn} open")
        pumps = [asyncio.create_task(self.pump(reader, up_writer)),
                 asyncio.create_task(self.pump(up_reader, writer))]
        try:
            # One direction ending (EOF, reset) ends the connection: HTTP/2 has no use for a
            # half-closed TCP connection.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            if self.open.pop(conn, None) is not None:
                for w in (writer, up_writer):
                    w.close()
            say(f"connection {conn} closed")

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while True:
                await self.flowing.wait()
                data = await src.read(65536)
                if not data:
                    return
                await self.flowing.wait()  # bytes read just before a blackhole wait too
                dst.write(data)
                await dst.drain()

    def reset_all(self) -> int:
        conns = list(self.open.items())
        self.open.clear()
        for _, (writer, up_writer) in conns:
            _rst(writer)
            _rst(up_writer)
        return len(conns)

    def command(self, cmd: str) -> str:
        if cmd == "blackhole":
            self.flowing.clear()
            return f"{len(self.open)} connection(s) stalled"
        if cmd == "cut":
            self.refusing = True
            self.flowing.set()
            return f"{self.reset_all()} connection(s) reset"
        if cmd == "reset":
            self.flowing.set()
            return f"{self.reset_all()} connection(s) reset"
        if cmd == "restore":
            self.refusing = False
            self.flowing.set()
            return f"{len(self.open)} connection(s) open"
        raise ValueError(f"unknown command {cmd!r} (blackhole, cut, reset, restore)")


async def main(upstream: str) -> None:
    host, port = upstream.rsplit(":", 1)
    proxy = Proxy(host, int(port))
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    say(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}")
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with server:
        while line := await stdin.readline():
            cmd = line.decode().strip()
            if not cmd:
                continue
            try:
                say(f"{cmd} done ({proxy.command(cmd)})")
            except ValueError as exc:
                say(f"error: {exc}")
        proxy.reset_all()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: net_proxy.py UPSTREAM_HOST:PORT")
    asyncio.run(main(sys.argv[1]))
