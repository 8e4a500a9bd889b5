"""`--log-format json`, and what is never logged: passwords, and bodies at INFO."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx

from aljex_sync.logs import JsonFormatter

PASSWORD = "pw-Zebra-7731-never-logged"
WRONG = "pw-Wrong-4410-never-logged"
MARKER = "BODYMARKER-q8Zx"


def test_json_formatter_writes_one_object_per_record_with_its_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "aljex_sync.live",
            logging.ERROR,
            __file__,
            1,
            "line %s\nforged",
            ("one",),
            sys.exc_info(),
        )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["level"] == "ERROR" and entry["logger"] == "aljex_sync.live"
    assert entry["message"] == "line one\nforged"  # escaped by JSON, kept whole
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert "ValueError: boom" in entry["exception"]


def post(url: str, fields: dict[str, str], password: str) -> int:
    return httpx.post(
        url,
        content=urlencode(fields).encode(),
        auth=("aljex", password),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    ).status_code


def test_serve_logs_json_lines_without_passwords_or_bodies_at_info(tmp_path: Path):
    config = tmp_path / "aljex-sync.toml"
    config.write_text(
        f"""[database]
url = "sqlite:///aljex.db"
[live]
listen = "127.0.0.1:0"
password = "{PASSWORD}"
[morning]
enabled = false
"""
    )
    command = [sys.executable, "-m", "aljex_sync.cli", "--log-level", "info"]
    process = subprocess.Popen(
        [*command, "--log-format", "json", "-c", str(config), "serve"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        for line in process.stderr:
            lines.append(line)
            found = re.search(r"listening on (http://\S+)", json.loads(line)["message"])
            if found:
                url = found.group(1)
                break
        else:
            raise AssertionError(f"serve did not start: {lines}")
        applied = {"web_sync_table_name": "notes", "web_sync_action": "create", "id": "1"}
        assert post(url, {**applied, "memo": MARKER}, PASSWORD) == 200
        held = {"web_sync_table_name": "invoicing", "web_sync_action": "create"}
        assert post(url, {**held, "memo": MARKER}, PASSWORD) == 200
        rejected = {"web_sync_table_name": "notes", "web_sync_action": "explode", "memo": MARKER}
        assert post(url, rejected, PASSWORD) == 422
        assert post(url, {**applied, "memo": MARKER}, WRONG) == 401
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        lines.extend(process.stderr)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    messages = [e["message"] for e in entries]
    assert any(" 401 " in m for m in messages)  # the requests were logged, one line each
    assert sum(" 200 " in m for m in messages) == 2
    everything = "".join(lines)
    assert PASSWORD not in everything and WRONG not in everything
    assert MARKER not in everything
