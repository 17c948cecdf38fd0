"""A worker process builds one Services, however many of its threads ask for it
first (a threads pool's first burst), and builds its S3 clients as it starts."""

from __future__ import annotations

import threading
import time

import pytest

import worker.base
import worker.pool_setup
from shared.services import Services
from shared.storage.s3 import S3Storage
from tests.conftest import make_settings


@pytest.fixture
def built(monkeypatch):
    """Services.from_settings, counted, slow enough for threads to race it."""
    calls: list[Services] = []
    real = Services.from_settings

    def from_settings(settings):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        calls.append(real(settings))
        return calls[-1]

    monkeypatch.setattr(Services, "from_settings", staticmethod(from_settings))
    monkeypatch.setattr(worker.base, "get_settings", lambda: make_settings(
        database_url="sqlite://", s3_endpoint_url="http://127.0.0.1:9"))
    worker.base.use_services(None)
    yield calls
    worker.base.use_services(None)


def test_sixteen_threads_asking_at_once_get_one_services(built):
    seen: list[Services] = []
    threads = [threading.Thread(target=lambda: seen.append(worker.base.services()))
               for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1
    assert all(svc is built[0] for svc in seen) and len(seen) == 16


def test_a_starting_worker_process_builds_its_s3_clients(built):
    worker.pool_setup._build_clients()
    storage = built[0].storage
    assert isinstance(storage, S3Storage)
    assert {"client", "signer"} <= set(vars(storage))  # cached: built, not on first use
