from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.production.procfile import REPO
from tests.production.stack import Stack, check_procfile, production_stack


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The Procfile's processes, started once for the module. HF_TEST_PROCFILE names
    another Procfile to try (a change to the repo's, before it is made)."""
    procfile = Path(os.environ.get("HF_TEST_PROCFILE") or REPO / "Procfile").resolve()
    check_procfile(procfile)  # before LocalStack starts: a Procfile it cannot run fails at once
    s3_endpoint = request.getfixturevalue("s3_endpoint")
    with production_stack(procfile, s3_endpoint, tmp_path_factory.mktemp("production")) as running:
        yield running
