"""The service as a whole: what `serve` starts for each choice of feeds."""

from __future__ import annotations

from .support import RunningService, make_settings


def test_live_only_runs_no_sftp_server(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, morning={"enabled": False})
    with RunningService(settings) as running:
        assert running.service.http_port is not None
        assert running.service.sftp is None and running.service.loads is None


def test_morning_only_runs_no_http_endpoint(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, live={"enabled": False})
    with RunningService(settings) as running:
        assert running.service.http_port is None
        assert running.service.sftp is not None and running.service.sftp.port > 0


def test_folder_watch_mode_runs_no_sftp_server(tmp_path, sqlite_url):
    settings = make_settings(sqlite_url, tmp_path, morning={"sftp": False})
    with RunningService(settings) as running:
        assert running.service.sftp is None and running.service.watch is not None
