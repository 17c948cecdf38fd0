"""The allow-list of result hosts (shared/core/media_hosts.py), parsed from settings."""

from __future__ import annotations

import pytest

from shared.core.media_hosts import MediaHosts

HOSTS = MediaHosts.parse("fal.media, *.fal.media ,127.0.0.1:8443,")


@pytest.mark.parametrize("url", [
    "https://fal.media/files/x.jpg", "https://v3b.fal.media/files/x.jpg",
    "https://FAL.MEDIA/x.jpg", "https://fal.media:443/x.jpg", "https://127.0.0.1:8443/x.jpg",
])
def test_allowed(url: str):
    assert HOSTS.allows(url)


@pytest.mark.parametrize("url", [
    "http://fal.media/x.jpg", "https://fal.media@evil.example/x.jpg",
    "https://user@fal.media/x.jpg", "https://fal.media.evil.example/x.jpg",
    "https://evilfal.media/x.jpg", "https://fal.media:8443/x.jpg", "https://127.0.0.1/x.jpg",
    "https://127.0.0.1:9999/x.jpg", "https://[::1]/x.jpg", "https://169.254.169.254/",
    "https://fal.media:notaport/x.jpg", "ftp://fal.media/x.jpg", "https:///x.jpg", "",
])
def test_refused(url: str):
    assert not HOSTS.allows(url)


def test_a_wildcard_does_not_allow_its_apex():
    assert not MediaHosts.parse("*.fal.media").allows("https://fal.media/x.jpg")
