"""An open-loop client for the HA tests, run inside the client network
namespace: `python ha_client.py HOST PORT [--interval S] [--timeout S]`.

Every --interval seconds it starts one request, whether or not the earlier
ones have finished: connect (at most --timeout), read the backend's hello
line (the node's name), close. Each result is printed as soon as it is known,
one JSON line: {"t": wall time the request started, "ok": bool, "node": name
or null, "error": text or null, "source": the local address or null}. With
--sources the requests take those local addresses in turn. It runs until stdin closes or SIGTERM."""

import argparse
import asyncio
import json
import signal
import sys
import time


async def one(host: str, port: int, timeout: float, source: str | None) -> None:
    started = time.time()
    node = error = None
    try:
        local = (source, 0) if source else None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), timeout)
        try:
            line = await asyncio.wait_for(reader.readline(), 1.0)
            node = line.decode().strip() or None
            if node is None:
                error = "closed before the hello"
        finally:
            writer.close()
    except asyncio.TimeoutError:
        error = "timeout"
    except OSError as e:
        error = e.strerror or str(e)
    print(json.dumps({"t": started, "ok": node is not None, "node": node, "error": error, "source": source}),
          flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--timeout", type=float, default=0.1)
    ap.add_argument("--sources", default="", help="Comma-separated local addresses, taken in turn.")
    args = ap.parse_args()
    sources = args.sources.split(",") if args.sources else [None]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    tasks = set()
    next_at = loop.time()
    n = 0
    while not stop.is_set():
        task = asyncio.create_task(one(args.host, args.port, args.timeout, sources[n % len(sources)]))
        n += 1
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += args.interval
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
        except asyncio.TimeoutError:
            pass
    if tasks:
        await asyncio.wait(tasks)


if __name__ == "__main__":
    asyncio.run(main())
