"""A plain HTTP/1.1 load generator on raw sockets (standard library only; no project imports).

It is the benchmark's and the fault bench's client, and the "plain HTTP client from outside the
project" of issue #18: it runs as its own process (`python serving/loadgen.py ...`), speaks HTTP/1.1
over keep-alive TCP connections with asyncio protocols (no httpx, no project client), and costs little
CPU per request (figures in the README) on the cores it shares with the servers.

Input: a JSON file with a list of requests {"method", "path", "body" (text), "class"} that every
connection cycles through, starting at a different offset. Output (stdout, one JSON object):
per class the status counts, latencies of every answered request, connection errors, wall and CPU
time. `--requests N` stops after N requests (after `--warmup` unmeasured ones), `--duration S`
after S seconds; with `--cover` a connection stops at the duration only once it has sent its share of
the list (the connections' shares together are the whole list), so every listed request is sent at
least once however slow the server is (the fault bench's every-class check depends on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


class _Conn(asyncio.Protocol):
    """One keep-alive connection: write a request, parse one response (Content-Length or chunked)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            got = _parse(self.buf)
            if got is not None:
                status, body, used, close = got
                del self.buf[:used]
                self.waiter.set_result((status, body, close))

    async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def _parse(buf: bytearray) -> tuple[int, bytes, int, bool] | None:
    """(status, body, bytes used, server closes) once a whole response is in `buf`, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).split(b"\r\n")
    status = int(head[0].split(b" ", 2)[1])
    length, chunked, close = None, False, False
    for line in head[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
        elif k == b"connection" and b"close" in v.lower():
            close = True
    start = end + 4
    if not chunked:
        length = length or 0
        if len(buf) < start + length:
            return None
        return status, bytes(buf[start : start + length]), start + length, close
    body, i = bytearray(), start
    while True:
        nl = buf.find(b"\r\n", i)
        if nl < 0:
            return None
        size = int(bytes(buf[i:nl]).split(b";")[0], 16)
        if len(buf) < nl + 2 + size + 2:
            return None
        body += buf[nl + 2 : nl + 2 + size]
        i = nl + 2 + size + 2
        if size == 0:
            return status, bytes(body), i, close


def _raw(method: str, host: str, path: str, body: str | None) -> bytes:
    data = (body or "").encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + "\r\n").encode() + data


class _Tally:
    """The measured requests' outcomes by class: status counts, latencies (ms), end times (s from the start)."""

    def __init__(self) -> None:
        self.classes: dict[str, dict] = {}
        self.conn_errors: list[str] = []

    def _count(self, cls: str, status: str) -> dict:
        c = self.classes.setdefault(cls, {"status": {}, "lat_ms": [], "t_s": []})
        c["status"][status] = c["status"].get(status, 0) + 1
        return c

    def record(self, cls: str, status: int, lat: float, t_end: float) -> None:
        c = self._count(cls, str(status))
        c["lat_ms"].append(round(lat * 1000, 4))
        c["t_s"].append(round(t_end, 3))

    def conn_error(self, cls: str, e: BaseException) -> None:
        self.conn_errors.append(f"{cls}: {type(e).__name__}: {e}"[:200])
        self._count(cls, "conn_error")


async def run(
    url: str,
    specs: list[dict],
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    warmup: int,
    timeout_s: float,
    cover: bool = False,
) -> dict:
    u = urlsplit(url)
    host, port = u.hostname, u.port or 80
    hosthdr = f"{host}:{port}"
    raws = [_raw(s.get("method", "POST"), hosthdr, s.get("path", "/rank"), s.get("body")) for s in specs]
    classes = [s.get("class", "valid") for s in specs]
    loop = asyncio.get_running_loop()
    tally = _Tally()
    issued = 0
    stop_at = None

    async def connect() -> _Conn:
        _, proto = await loop.create_connection(_Conn, host, port)
        return proto

    async def worker(k: int, measured: bool, n_total: int | None) -> None:
        nonlocal issued
        conn = await connect()
        i = (k * len(raws)) // concurrency  # the connections start spread evenly over the requests
        share = ((k + 1) * len(raws)) // concurrency - i if cover else 0  # this connection's part of the list
        sent = 0
        while True:
            if measured:
                if n_total is not None and issued >= n_total:
                    break
                if stop_at is not None and time.perf_counter() >= stop_at and sent >= share:
                    break
            elif issued >= n_total:
                break
            issued += 1
            sent += measured
            raw, cls = raws[i], classes[i]
            i = (i + 1) % len(raws)
            t = time.perf_counter()
            try:
                status, _, close = await asyncio.wait_for(conn.request(raw), timeout_s)
            except (TimeoutError, ConnectionError, OSError) as e:
                if measured:
                    tally.conn_error(cls, e)
                conn.transport.close()
                conn = await connect()
                continue
            if measured:
                tally.record(cls, status, time.perf_counter() - t, time.perf_counter() - t_start)
            if close or conn.closed:
                conn.transport.close()
                conn = await connect()
        conn.transport.close()

    t_start = time.perf_counter()
    if warmup:
        await asyncio.gather(*(worker(k, False, warmup) for k in range(min(concurrency, warmup))))
    issued = 0
    t_start = time.perf_counter()
    cpu0 = time.process_time()
    if duration_s is not None:
        stop_at = t_start + duration_s
    await asyncio.gather(*(worker(k, True, requests) for k in range(concurrency)))
    wall, cpu = time.perf_counter() - t_start, time.process_time() - cpu0
    return {
        "url": url,
        "concurrency": concurrency,
        "wall_s": wall,
        "cpu_s": cpu,
        "classes": tally.classes,
        "conn_errors": tally.conn_errors[:50],
        "n_conn_errors": len(tally.conn_errors),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--specs", required=True, help="JSON file: list of {method, path, body, class}")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument(
        "--cover", action="store_true", help="with --duration: send every listed request at least once"
    )
    p.add_argument("--out", help="write the JSON here instead of stdout")
    a = p.parse_args(argv)
    if (a.requests is None) == (a.duration is None):
        p.error("give exactly one of --requests / --duration")
    with open(a.specs) as fh:
        specs = json.load(fh)
    try:
        import uvloop  # the same event loop uvicorn uses, when installed

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(a.url, specs, a.concurrency, a.requests, a.duration, a.warmup, a.timeout, a.cover))
    text = json.dumps(res)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
