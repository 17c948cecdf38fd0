"""The emulator's TLS: a local CA kept in the state dir and a fresh server certificate per start."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import certifi


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by the owner only, replacing it atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def prepare_tls(state_dir: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, Path, Path]:
    """(server context, client context trusting system roots + our CA, ca.pem, ca-bundle.pem).

    The CA is kept in the state dir (ca.pem + ca-key.pem) so that clients that already
    loaded ca.pem keep trusting a restarted emulator; the server certificate is fresh each start.
    """
    # trustme is a test extra, an optional dependency loaded on first use: without it the
    # rest of devstack (and `hairfluencer dev`'s registration) still imports.
    import trustme

    ca_path, ca_key_path = state_dir / "ca.pem", state_dir / "ca-key.pem"
    if ca_path.exists() and ca_key_path.exists():
        ca = trustme.CA.from_pem(ca_path.read_bytes(), ca_key_path.read_bytes())
    else:
        ca = trustme.CA(organization_name="fal emulator (development only)")
        write_private(ca_key_path, ca.private_key_pem.bytes())
        ca.cert_pem.write_to_path(str(ca_path))
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1", common_name="fal-emulator")
    cert_path, key_path = state_dir / "server.pem", state_dir / "server-key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    write_private(key_path, leaf.private_key_pem.bytes())
    bundle_path = state_dir / "ca-bundle.pem"
    roots = certifi.where()  # the system roots httpx trusts by default
    system = Path(roots).read_bytes() if roots and Path(roots).is_file() else b""
    bundle_path.write_bytes(system.rstrip(b"\n") + b"\n" + ca_path.read_bytes())

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(str(cert_path), str(key_path))
    client_ctx = ssl.create_default_context(cafile=str(bundle_path))
    return server_ctx, client_ctx, ca_path, bundle_path
