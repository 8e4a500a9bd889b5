"""A deliberately broken receiver: it answers 200 first and commits later.

The control of the crash test (``bench/crash.py``). It speaks the Live Sync wire on its
own port and runs the real ``aljex-sync serve`` behind it as a child, in its own process
group; each POST is answered 200 at once, then handed to the real server ``--delay``
seconds later (retried until the real server takes it). It listens once the real server
does, as a real receiver would. So every record acknowledged in
the last ``--delay`` seconds before a SIGKILL of the group is lost, exactly the defect
the harness exists to catch. Nothing here may ever be used to receive real data.

    python -m bench.ack_first --listen 127.0.0.1:PORT --upstream URL [--delay S] -- COMMAND...
"""

from __future__ import annotations

import argparse
import http.client
import queue
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

RETRY_SECONDS = 0.05

# (due time, body, headers to pass on)
Pending = tuple[float, bytes, dict[str, str]]


class Forwarder(threading.Thread):
    """Posts each acknowledged body to the real server once its delay is over."""

    def __init__(self, upstream: str, delay: float) -> None:
        super().__init__(name="forwarder", daemon=True)
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self.delay = delay
        self.pending: queue.Queue[Pending] = queue.Queue()
        self.conn: http.client.HTTPConnection | None = None

    def reachable(self) -> bool:
        """Whether the real receiver accepts connections yet."""
        try:
            socket.create_connection((self.host, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def put(self, body: bytes, headers: dict[str, str]) -> None:
        self.pending.put((time.monotonic() + self.delay, body, headers))

    def run(self) -> None:
        while True:
            due, body, headers = self.pending.get()
            time.sleep(max(0.0, due - time.monotonic()))
            while not self._post(body, headers):
                time.sleep(RETRY_SECONDS)

    def _post(self, body: bytes, headers: dict[str, str]) -> bool:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self.conn.request("POST", self.path, body=body, headers=headers)
            response = self.conn.getresponse()
            response.read()
            if response.will_close:
                self._close()
            return response.status < 500
        except (OSError, http.client.HTTPException):
            self._close()
            return False

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def handler_for(forwarder: Forwarder) -> type[BaseHTTPRequestHandler]:
    class AckFirst(BaseHTTPRequestHandler):
        """Reads the body, queues it, and answers 200 before anything is stored."""

        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            passed = {
                name: value
                for name in ("Authorization", "Content-Type")
                if (value := self.headers.get(name)) is not None
            }
            forwarder.put(body, passed)
            reply = b"applied (not really: it is committed later)\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return AckFirst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ack_first", description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT to answer on")
    parser.add_argument("--upstream", required=True, help="URL of the real receiver")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds from 200 to commit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the real receiver's command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the real receiver's command after --")
    child = subprocess.Popen(command)  # same process group: a SIGKILL of it takes both
    forwarder = Forwarder(args.upstream, args.delay)
    # Listen only once the real receiver does, so that what is lost is only what a kill
    # catches between a 200 and its commit, not everything sent while it was starting.
    while child.poll() is None and not forwarder.reachable():
        time.sleep(RETRY_SECONDS / 5)
    forwarder.start()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), handler_for(forwarder))
    server.daemon_threads = True
    try:
        server.serve_forever()
    finally:
        child.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
