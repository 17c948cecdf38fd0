"""Which URLs a try-on result may be downloaded from (the SSRF boundary).

The allow-list (FAL_MEDIA_HOSTS) holds exact hosts (`fal.media`, or `host:port` for
a local emulator) and wildcard suffixes (`*.fal.media`: any subdomain, never the
apex unless listed too; fal adds CDN hosts like v3b.fal.media). A URL passes only
over HTTPS, with no user info, on the default port unless its exact `host:port`
is listed, and an IP literal only if listed exactly: `https://fal.media@evil.example`,
`fal.media.evil.example`, `https://169.254.169.254/` and `http://` all fail.
Redirects are never followed by the downloader (shared/tryons/result_download.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit


class MediaHosts:
    def __init__(self, entries: Iterable[str]) -> None:
        entries = [e.strip().lower() for e in entries if e.strip()]
        self.exact = frozenset(e for e in entries if not e.startswith("*."))
        self.suffixes = tuple(e[1:] for e in entries if e.startswith("*."))  # ".fal.media"

    @classmethod
    def parse(cls, setting: str) -> MediaHosts:
        return cls(setting.split(","))

    def allows(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" or not host or "@" in parts.netloc:
            return False
        if port is not None and port != 443:
            return f"{host}:{port}" in self.exact
        if _is_ip(host):
            return host in self.exact
        return host in self.exact or any(host.endswith(s) and len(host) > len(s)
                                         for s in self.suffixes)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
