"""The production wheel (issue 16, point 8): api, worker, shared and what they need,
never devstack; the development commands come from devstack's own distribution; and
an installed wheel resolves no default inside site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, with no index needed.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(REPO)], check=True, cwd=out, timeout=240)
    [built] = out.glob("hairfluencer-*.whl")
    return built


def test_the_wheel_carries_the_service_and_nothing_of_development(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"api", "worker", "shared", "celeryconfig.py"}
    assert not [n for n in names if n.startswith(("devstack/", "tests/", "bench/"))]
    for needed in ("shared/tryons/hairstyles.json", "shared/migrations/env.py",
                   "shared/migrations/script.py.mako", "api/wsgi.py", "worker/app.py"):
        assert needed in names, needed
    assert any(n.startswith("shared/migrations/versions/0006_") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hairfluencer = api.cli:main" in text
    assert "hairfluencer.commands" not in text and "devstack" not in text


def test_an_installed_wheel_resolves_no_default_inside_site_packages(wheel: Path, tmp_path: Path):
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    probe = ("from shared.core import config; s = config.Settings(); "
             "print(config.DEV_SECRET_FILE); print(s.database_url)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=work, capture_output=True,
                          text=True, timeout=60, check=True,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    secret_file, database_url = done.stdout.split()
    assert str(site) not in secret_file and str(site) not in database_url
    assert secret_file == str(work / ".devstack" / "dev-jwt-secret")
    assert database_url == f"sqlite:///{work / '.devstack' / 'hairfluencer.sqlite3'}"


def test_the_development_commands_come_from_devstack_s_own_distribution():
    from importlib.metadata import distribution

    devstack = distribution("hairfluencer-devstack")
    commands = {ep.name: ep.value for ep in devstack.entry_points
                if ep.group == "hairfluencer.commands"}
    assert commands == {"dev": "devstack.dev:dev_command",
                        "try-on": "devstack.client:try_on_command"}
    assert not [ep for ep in distribution("hairfluencer").entry_points
                if ep.group == "hairfluencer.commands"]
