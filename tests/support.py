"""Helpers the tests share: settings for a test, and the service running in a thread."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from aljex_sync import config
from aljex_sync.config import Settings
from aljex_sync.service import BackgroundService
from aljex_sync.store.database import open_engine

TEST_PASSWORD = "s3cret-pass"


def make_settings(database_url: str, tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: loopback, port 0, a known password; sections override."""
    raw: dict[str, Any] = {
        "database": {"url": database_url},
        "live": {"listen": "127.0.0.1:0", "password": TEST_PASSWORD},
        "morning": {
            "listen": "127.0.0.1:0",
            "password": TEST_PASSWORD,
            "inbox": str(tmp_path / "inbox"),
            "host_key": str(tmp_path / "host_key"),
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config.parse(raw, base=tmp_path)


class RunningService(BackgroundService):
    """The service in a background thread, with a way to open its database."""

    def engine(self) -> Engine:
        return open_engine(self.settings.database.url)


def sftp_upload(
    port: int,
    commands: list[str],
    workdir: Path,
    *,
    password: str = TEST_PASSWORD,
    user: str = "aljex",
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's `sftp` in batch mode, logging in with a password via SSH_ASKPASS."""
    workdir.mkdir(parents=True, exist_ok=True)
    askpass = workdir / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' {shlex.quote(password)}\n")
    askpass.chmod(0o700)
    batch = workdir / "batch"
    batch.write_text("".join(f"{c}\n" for c in commands))
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    env["DISPLAY"] = ":0"
    options = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=no",
        "-F",
        "/dev/null",
    ]
    return subprocess.run(
        ["sftp", *options, "-P", str(port), "-b", str(batch), f"{user}@127.0.0.1"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
