"""Receivers as separate processes, for the tests of several receivers on one database."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .support import TEST_PASSWORD


def write_config(tmp_path: Path, url: str, name: str = "aljex-sync.toml", **morning: str) -> Path:
    path = tmp_path / name
    extra = "".join(f'{key} = "{value}"\n' for key, value in morning.items())
    path.write_text(
        f"""[database]
url = "{url}"
[live]
listen = "127.0.0.1:0"
password = "{TEST_PASSWORD}"
[morning]
enabled = {"true" if morning else "false"}
{extra}"""
    )
    return path


def aljex_sync(config: Path, *args: str, level: str = "info") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aljex_sync.cli", "--log-level", level, "-c", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


class Lines:
    """A process's output, read as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: list[str] = []
        self.changed = threading.Condition()
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.seen.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, pattern: str, after: int = 0) -> re.Match[str]:
        """The first line from ``after`` on that matches; fails if the process ends first."""
        with self.changed:
            while True:
                for line in self.seen[after:]:
                    if found := re.search(pattern, line):
                        return found
                assert not self.ended, f"ended before {pattern!r}: {self.seen}"
                assert self.changed.wait(90), f"no {pattern!r} in 90 s: {self.seen}"

    def stop(self) -> int:
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(60)
        finally:
            self.close()

    def close(self) -> None:
        """Kill what is left of its process group, then close its output."""
        kill_group(self.process)
        with self.changed:
            self.changed.wait_for(lambda: self.ended, 10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def mark(self) -> int:
        """Where the lines seen so far end, for ``wait_for(after=...)``."""
        with self.changed:
            return len(self.seen)

    def count(self, text: str) -> int:
        with self.changed:
            return sum(text in line for line in self.seen)


def kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def free_port() -> int:
    """A port free now on loopback (for a server that cannot be told port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """Debian's nginx in the foreground, in front of ``upstreams``, with a config of its own.

    A request a backend fails (connection refused or reset, a timeout, a 503) is sent to
    the next one, POSTs included (``non_idempotent``): the way a load balancer in front of
    several receivers is set up (docs/deploy.md).
    """

    def __init__(self, work: Path, upstreams: list[int]) -> None:
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        servers = "".join(f"    server 127.0.0.1:{port};\n" for port in upstreams)
        config = work / "nginx.conf"
        config.write_text(
            f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi;
  uwsgi_temp_path {work}/uwsgi;
  scgi_temp_path {work}/scgi;
  upstream receivers {{
{servers}    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://receivers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_next_upstream error timeout http_503 non_idempotent;
      proxy_connect_timeout 2s;
      proxy_read_timeout 60s;
    }}
  }}
}}
"""
        )
        self.process = subprocess.Popen(
            ["nginx", "-p", str(work), "-e", str(work / "error.log"), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (work / "error.log").read_text() if (work / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {log}")
            time.sleep(0.05)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        finally:
            kill_group(self.process)
