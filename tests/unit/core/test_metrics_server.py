"""A process group's own scrape endpoint (shared/core/metrics_server.py): what it
serves from the group's directory, what it removes as the group starts, and how it
refuses or gives up. The whole flow across real processes is
tests/integration/test_metrics_flow.py."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.procs import free_port, port_accepts, wait_until
from shared.core import metrics_server
from shared.core.config import ConfigError
from shared.core.metrics import queue_label
from tests.conftest import make_settings

# A process of the group: counts 3 uploads into the directory, then waits for stdin.
COUNTING_PROCESS = """
import sys
from prometheus_client import Counter
Counter("upload_issued", "issued").inc(3)
print("counted", flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def no_server_yet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(metrics_server, "_server", None)
    yield
    metrics_server.stop_metrics_server()


@pytest.fixture
def group_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


def counting_process(directory: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", COUNTING_PROCESS], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert process.stdout is not None and process.stdout.readline() == "counted\n"
    return process


def ended_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_group_s_processes_are_summed_and_an_ended_one_still_counts(group_dir):
    port = free_port()
    children = [counting_process(group_dir) for _ in range(2)]
    url = metrics_server.serve_metrics(make_settings(metrics_port=port))
    assert url == f"http://127.0.0.1:{port}/metrics"
    assert "upload_issued_total 6.0" in httpx.get(url, timeout=5).text
    # A child that ends while the group runs: its counts stay in the sum.
    children[0].communicate("")
    metrics_server.forget_process(children[0].pid)
    assert "upload_issued_total 6.0" in httpx.get(url, timeout=5).text
    children[1].communicate("")


def test_the_files_of_ended_processes_go_as_the_group_starts(group_dir):
    running = counting_process(group_dir)
    ended = ended_pid()
    for kind in ("counter", "histogram", "gauge_livesum"):
        (group_dir / f"{kind}_{ended}.db").write_bytes(b"")
    (group_dir / "notes.txt").write_text("not ours")
    try:
        assert metrics_server.remove_finished_processes_files(group_dir) == 3
        assert sorted(p.name for p in group_dir.iterdir()) == [
            f"counter_{running.pid}.db", "notes.txt"]
    finally:
        running.communicate("")


def test_no_port_no_endpoint(group_dir):
    assert metrics_server.serve_metrics(make_settings()) is None


def test_a_port_needs_the_group_s_directory(monkeypatch, caplog):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    port = free_port()
    with caplog.at_level(logging.ERROR, logger=metrics_server.__name__):
        assert metrics_server.serve_metrics(make_settings(metrics_port=port)) is None
    assert "METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR" in caplog.text
    assert not port_accepts(port)


def test_a_port_taken_is_said_and_the_process_goes_on(group_dir, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger=metrics_server.__name__):
            assert metrics_server.serve_metrics(make_settings(metrics_port=port)) is None
    assert f"metrics endpoint not started on 127.0.0.1:{port}" in caplog.text
    # Not marked as serving: a later start (another port) still opens one.
    other = free_port()
    url = metrics_server.serve_metrics(make_settings(metrics_port=other))
    assert url is not None
    assert wait_until(lambda: httpx.get(url, timeout=2).status_code == 200, 5)


def test_only_one_endpoint_per_process(group_dir):
    assert metrics_server.serve_metrics(make_settings(metrics_port=free_port()))
    # e.g. beat embedded in a worker (`celery worker -B`) sends beat_init after the
    # worker started the group's endpoint
    assert metrics_server.serve_metrics(make_settings(metrics_port=free_port())) is None


def test_metrics_port_is_checked():
    with pytest.raises(ConfigError, match="METRICS_PORT"):
        make_settings(metrics_port=70000)


@pytest.mark.parametrize(("delivery_info", "label"), [
    ({"exchange": "", "routing_key": "tryons_done"}, "tryons_done"),
    ({"routing_key": "a-queue-of-someone-else"}, "other"),
    ({}, "other"),
    (None, "other"),
])
def test_the_queue_label_is_one_of_ours(delivery_info, label):
    assert queue_label(delivery_info) == label
