"""serving/loadgen.py's --cover: at a duration too short for the list, every listed request is still sent."""

from __future__ import annotations

import asyncio

from serving import loadgen


async def _slow_server(delay_s: float) -> asyncio.base_events.Server:
    """A keep-alive HTTP/1.1 server that answers every request 200 after `delay_s`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _classes_sent(cover: bool) -> set[str]:
    specs = [{"path": "/rank", "body": "{}", "class": f"c{i}"} for i in range(40)]

    async def main() -> dict:
        server = await _slow_server(0.02)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await loadgen.run(f"http://127.0.0.1:{port}", specs, 4, None, 0.05, 0, 10.0, cover)

    res = asyncio.run(main())
    assert res["n_conn_errors"] == 0
    return {c for c, v in res["classes"].items() if sum(v["status"].values())}


def test_cover_sends_every_listed_request_at_least_once():
    assert _classes_sent(cover=True) == {f"c{i}" for i in range(40)}
    assert len(_classes_sent(cover=False)) < 40  # 0.05 s at 20 ms a request: a few per connection
