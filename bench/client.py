"""A load client for the Live Sync benchmark, run as its own process.

It uses the standard library's keep-alive HTTP client, one connection per thread, so that
the server, not the client, is what gets measured. Prints one JSON object on stdout.

    python -m bench.client URL USER PASSWORD BODIES_FILE CONNECTIONS
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit


def _send_all(url: str, auth: str, bodies: list[bytes], latencies: list[float]) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.connect()
    # http.client writes headers and body separately; without NODELAY, Nagle and delayed
    # ACKs add 40 ms to each request and the benchmark would measure the kernel.
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"}
    failures = 0
    for body in bodies:
        started = time.perf_counter()
        conn.request("POST", parts.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            failures += 1
    conn.close()
    return failures


def main() -> None:
    url, user, password, bodies_file, connections = sys.argv[1:6]
    n_conn = int(connections)
    with open(bodies_file, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f]
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    shares = [bodies[i::n_conn] for i in range(n_conn)]
    latencies: list[list[float]] = [[] for _ in range(n_conn)]
    failures = [0] * n_conn

    def work(i: int) -> None:
        failures[i] = _send_all(url, auth, shares[i], latencies[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_conn)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    flat = sorted(x for part in latencies for x in part)
    print(
        json.dumps(
            {
                "requests": len(flat),
                "failures": sum(failures),
                "seconds": elapsed,
                "per_second": len(flat) / elapsed,
                "p50_ms": flat[len(flat) // 2] * 1000,
                "p99_ms": flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1000,
                # 200 evenly spaced quantiles, enough to draw the distribution.
                "quantiles_ms": [flat[i * (len(flat) - 1) // 199] * 1000 for i in range(200)],
            }
        )
    )


if __name__ == "__main__":
    main()
