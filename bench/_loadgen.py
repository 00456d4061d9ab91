"""A small HTTP load generator: N connections in threads, each request with its own session key.

Run as its own process (``python -m bench._loadgen``) so it does not share a GIL with anything
it measures. Connections are keep-alive where the server allows it (gunicorn's sync workers
close after every response; http.client then reconnects). Bounded by ``--duration``; prints one
JSON object: requests, errors, seconds, and every latency in seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time


def _worker(host: str, port: int, keys: list[str], *, offset: int, stop_at: float, record_from: float,
            latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    i = offset
    clock = time.perf_counter
    while True:
        now = clock()
        if now >= stop_at:
            break
        key = keys[i % len(keys)]
        i += 1
        try:
            conn.request("GET", f"/{i}", headers={"X-OME-Session-Key": key})
            response = conn.getresponse()
            response.read()
            status = response.status
            if response.will_close:
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            errors.append(type(exc).__name__)
            continue
        done = clock()
        if now >= record_from:
            if status != 200:
                errors.append(f"HTTP {status}")
            else:
                latencies.append(done - now)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--keys", required=True, help="file with one session key per line")
    args = parser.parse_args(argv)
    with open(args.keys, encoding="ascii") as handle:
        keys = [line.strip() for line in handle if line.strip()]
    start = time.perf_counter()
    record_from = start + args.warmup
    stop_at = record_from + args.duration
    per_thread: list[list[float]] = [[] for _ in range(args.connections)]
    errors: list[str] = []
    threads = [threading.Thread(target=_worker, args=(args.host, args.port, keys), daemon=True,
                                kwargs={"offset": n * 7919, "stop_at": stop_at, "record_from": record_from,
                                        "latencies": per_thread[n], "errors": errors})
               for n in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.warmup + args.duration + 30)
    latencies = [x for chunk in per_thread for x in chunk]
    json.dump({"requests": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)),
               "seconds": args.duration, "latencies": latencies}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
