"""shared.images.scanners: the Haar face check, clamd's INSTREAM protocol (against a fake and a
real clamd), the NSFW placeholder and the factory.

Optional tools (OpenCV, clamd) are skipped when absent locally, but CI=true turns the
skip into a failure: CI has to prove these hooks work, not quietly skip them.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from PIL import Image

from shared.images.sanitize import inspect_and_decode
from shared.images.scanners import (
    MALWARE,
    MULTIPLE_FACES,
    NO_FACE,
    ClamdScanner,
    FaceDetector,
    NoopNsfwDetector,
    NsfwDetector,
    Scanner,
    ScannerUnavailable,
    ScanVerdict,
    build_scanners,
    parse_instream_reply,
    run_scanners,
)
from tests.conftest import fixture_bytes, fixture_image

ORIENTATION = 0x0112


def missing_tool(what: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} not installed")




@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return fixture_image("astronaut.jpg")


# --------------------------------------------------------------------------- faces


@pytest.fixture(scope="module")
def faces() -> FaceDetector:
    try:
        import cv2  # noqa: F401
    except ImportError:
        missing_tool("opencv-python-headless (the 'face' extra)")
    return FaceDetector()


def test_one_face_in_astronaut(faces: FaceDetector, astronaut: Image.Image) -> None:
    assert faces.count_faces(astronaut) == 1
    assert faces.scan(fixture_bytes("astronaut.jpg"), astronaut) is None


@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.jpg"])
def test_no_face_in_cat_or_coffee(faces: FaceDetector, name: str) -> None:
    image = fixture_image(name)
    assert faces.count_faces(image) == 0
    verdict = faces.scan(fixture_bytes(name), image)
    assert verdict is not None
    assert verdict.code == NO_FACE == "upload.no_face"


def test_face_found_through_the_upload_pipeline(faces: FaceDetector) -> None:
    data = fixture_bytes("astronaut.jpg")
    _, image = inspect_and_decode(data, "image/jpeg", 40_000_000)
    assert faces.scan(data, image) is None


def test_face_found_in_large_photo(faces: FaceDetector, astronaut: Image.Image) -> None:
    big = astronaut.resize((2048, 2048), Image.Resampling.BICUBIC)  # downscaled internally
    assert faces.count_faces(big) == 1


def test_exif_orientation_is_honoured(faces: FaceDetector, astronaut: Image.Image) -> None:
    # Stored sideways (as a phone sensor would), EXIF says "rotate 90° clockwise".
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    buf = io.BytesIO()
    astronaut.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", exif=exif)
    _, sideways = inspect_and_decode(buf.getvalue(), "image/jpeg", 40_000_000)

    assert faces.count_faces(sideways) == 1


def test_multiple_faces_over_the_limit(astronaut: Image.Image) -> None:
    try:
        detector = FaceDetector(max_faces=1)
    except RuntimeError:
        missing_tool("opencv-python-headless (the 'face' extra)")
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut, (512, 0))

    assert detector.count_faces(pair) == 2
    verdict = detector.scan(b"", pair)
    assert verdict is not None
    assert verdict.code == MULTIPLE_FACES
    assert detector.scan(b"", astronaut) is None


# --------------------------------------------------------------------------- clamd replies


def test_parse_clean_reply() -> None:
    assert parse_instream_reply("stream: OK") is None


def test_parse_found_reply() -> None:
    verdict = parse_instream_reply("stream: Win.Test.EICAR_HDB-1 FOUND")
    assert verdict == ScanVerdict(MALWARE, "clamd signature Win.Test.EICAR_HDB-1")


@pytest.mark.parametrize(
    "reply",
    [
        "INSTREAM size limit exceeded. ERROR",
        "stream: Can't allocate memory ERROR",
        "UNKNOWN COMMAND",
        "",
        "stream: FOUND but odd",
    ],
)
def test_error_replies_are_unavailable_not_clean(reply: str) -> None:
    with pytest.raises(ScannerUnavailable):
        parse_instream_reply(reply)


@pytest.mark.parametrize(
    "address",
    ["tcp://", "tcp://host", "tcp://host:notaport", "tcp://:3310", "http://x:1", "", "unix://"],
)
def test_bad_addresses_are_configuration_errors(address: str) -> None:
    with pytest.raises(ValueError):
        ClamdScanner(address)


# --------------------------------------------------------------------------- fake clamd


class FakeClamd:
    """A one-connection-at-a-time INSTREAM server that records what it was sent."""

    def __init__(self, path: str, respond: Callable[[bytes], bytes | None]) -> None:
        self.received: list[bytes] = []
        self.chunk_sizes: list[int] = []
        self._respond = respond
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen()
        # close() alone does not wake a thread blocked in accept(); poll a stop flag.
        self._server.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except (OSError, struct.error, AssertionError):
                    continue  # a test that hangs up early; keep serving

    def _handle(self, conn: socket.socket) -> None:
        stream = conn.makefile("rb")
        assert stream.read(len(b"zINSTREAM\0")) == b"zINSTREAM\0"
        data = bytearray()
        while True:
            (size,) = struct.unpack(">I", stream.read(4))
            if size == 0:
                break
            self.chunk_sizes.append(size)
            data += stream.read(size)
        self.received.append(bytes(data))
        reply = self._respond(bytes(data))
        if reply is not None:
            conn.sendall(reply)


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # Not tmp_path: unix socket paths are limited to ~104 bytes.
    with tempfile.TemporaryDirectory(prefix="hf-sock-") as directory:
        yield directory


@pytest.fixture
def fake_clamd(socket_dir: str) -> Iterator[Callable[[Callable[[bytes], bytes | None]], str]]:
    servers: list[FakeClamd] = []

    def start(respond: Callable[[bytes], bytes | None]) -> str:
        path = os.path.join(socket_dir, f"fake{len(servers)}.sock")
        servers.append(FakeClamd(path, respond))
        return path

    yield start
    for server in servers:
        server.close()


def test_instream_chunks_reassemble(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "framing.sock")
    server = FakeClamd(path, lambda data: b"stream: OK\0")
    try:
        data = fixture_bytes("coffee.jpg")
        assert ClamdScanner(path, chunk_size=10_000).scan(data, Image.new("RGB", (1, 1))) is None
        assert server.received == [data]
        assert max(server.chunk_sizes) == 10_000
        assert sum(server.chunk_sizes) == len(data)
    finally:
        server.close()


def test_found_via_socket(fake_clamd: Callable[..., str]) -> None:
    path = fake_clamd(lambda data: b"stream: Hairfluencer.Test FOUND\0")
    verdict = ClamdScanner(f"unix://{path}").scan(b"abc", Image.new("RGB", (1, 1)))
    assert verdict == ScanVerdict(MALWARE, "clamd signature Hairfluencer.Test")


def test_error_reply_via_socket(fake_clamd: Callable[..., str]) -> None:
    path = fake_clamd(lambda data: b"INSTREAM size limit exceeded. ERROR\0")
    with pytest.raises(ScannerUnavailable, match="size limit"):
        ClamdScanner(path).scan(b"abc", Image.new("RGB", (1, 1)))


def test_hang_up_without_reply_is_unavailable(fake_clamd: Callable[..., str]) -> None:
    path = fake_clamd(lambda data: None)
    with pytest.raises(ScannerUnavailable):
        ClamdScanner(path).scan(b"abc", Image.new("RGB", (1, 1)))


def test_silent_server_times_out(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()  # accepts into the backlog, never answers
        started = time.perf_counter()
        with pytest.raises(ScannerUnavailable, match="timeout|TimeoutError"):
            ClamdScanner(path, timeout=0.3).scan(b"abc", Image.new("RGB", (1, 1)))
        assert time.perf_counter() - started < 3


def test_missing_unix_socket_is_unavailable(socket_dir: str) -> None:
    scanner = ClamdScanner(os.path.join(socket_dir, "nobody-home.sock"))
    with pytest.raises(ScannerUnavailable):
        scanner.scan(b"abc", Image.new("RGB", (1, 1)))
    with pytest.raises(ScannerUnavailable):
        scanner.ping()


def test_closed_tcp_port_is_unavailable() -> None:
    with socket.socket() as probe:  # find a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ScannerUnavailable):
        ClamdScanner(f"tcp://127.0.0.1:{port}", timeout=2).scan(b"abc", Image.new("RGB", (1, 1)))


# --------------------------------------------------------------------------- real clamd


def find_clamav_tool(name: str) -> str | None:
    # Debian puts clamd in /usr/sbin, which is not on a normal user's PATH.
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/local/sbin") if (p := Path(d) / name).exists()),
        None,
    )


class RealClamd:
    def __init__(self, socket_path: str, signed: bytes, signature: str, startup_s: float):
        self.socket_path = socket_path
        self.signed = signed
        self.signature = signature
        self.startup_s = startup_s


@pytest.fixture(scope="module")
def real_clamd() -> Iterator[RealClamd]:
    clamd, sigtool = find_clamav_tool("clamd"), find_clamav_tool("sigtool")
    if clamd is None or sigtool is None:
        missing_tool("clamav-daemon (clamd) and sigtool")
    assert clamd is not None and sigtool is not None

    with tempfile.TemporaryDirectory(prefix="hf-clamd-") as work:
        root = Path(work)
        database = root / "db"
        database.mkdir()
        # A harmless file: a tiny PNG. Its SHA-256 becomes our only "virus" signature.
        harmless = root / "HairfluencerTestSample.png"
        Image.new("RGB", (8, 8), (200, 30, 30)).save(harmless, "PNG")
        signature_line = subprocess.run(
            [sigtool, "--sha256", str(harmless)],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        ).stdout.strip()
        # sigtool prints "<sha256>:<size>:<name>" - exactly the .hsb line clamd loads
        # (name = the file name).
        assert re.fullmatch(r"[0-9a-f]{64}:\d+:HairfluencerTestSample\.png", signature_line)
        (database / "hairfluencer-test.hsb").write_text(signature_line + "\n")

        socket_path = str(root / "clamd.sock")
        config = root / "clamd.conf"
        config.write_text(
            f"LocalSocket {socket_path}\n"
            f"DatabaseDirectory {database}\n"
            "Foreground yes\n"
            f"TemporaryDirectory {root}\n"
        )
        log_path = root / "clamd.log"
        with log_path.open("wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen(
                [clamd, "--config-file", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
            try:
                startup_s = _wait_for_clamd(process, socket_path, log_path, started)
                yield RealClamd(
                    socket_path, harmless.read_bytes(), "HairfluencerTestSample.png", startup_s
                )
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_for_clamd(
    process: subprocess.Popen[bytes], socket_path: str, log_path: Path, started: float
) -> float:
    scanner = ClamdScanner(socket_path, timeout=2)
    deadline = started + 60
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            pytest.fail(f"clamd exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            scanner.ping()
        except ScannerUnavailable:
            time.sleep(0.02)
            continue
        return time.perf_counter() - started
    pytest.fail(f"clamd did not answer PING within 60 s:\n{log_path.read_text()}")


def test_real_clamd_flags_the_signed_file(real_clamd: RealClamd) -> None:
    verdict = ClamdScanner(real_clamd.socket_path).scan(real_clamd.signed, Image.new("RGB", (8, 8)))
    assert verdict is not None
    assert verdict.code == MALWARE == "upload.malware"
    assert real_clamd.signature in verdict.detail


def test_real_clamd_accepts_a_clean_photo(real_clamd: RealClamd, astronaut: Image.Image) -> None:
    scanner = ClamdScanner(real_clamd.socket_path, chunk_size=8192)  # many chunks
    assert scanner.scan(fixture_bytes("astronaut.jpg"), astronaut) is None


def test_real_clamd_starts_quickly_with_a_tiny_database(real_clamd: RealClamd) -> None:
    # Typically well under a second here; the full official database takes ~10-30 s.
    print(f"clamd answered PING {real_clamd.startup_s:.3f} s after launch")
    assert real_clamd.startup_s < 30


def test_real_clamd_via_build_scanners(real_clamd: RealClamd, astronaut: Image.Image) -> None:
    scanners = build_scanners(face_enabled=False, clamd_address=real_clamd.socket_path, nsfw=None)
    verdict = run_scanners(scanners, real_clamd.signed, astronaut)
    assert verdict is not None and verdict.code == MALWARE


# --------------------------------------------------------------------------- NSFW + factory


def test_noop_nsfw_accepts_everything(astronaut: Image.Image) -> None:
    detector = NoopNsfwDetector()
    assert isinstance(detector, NsfwDetector)
    assert detector.scan(b"anything", astronaut) is None


def test_everything_is_off_by_default() -> None:
    assert build_scanners(face_enabled=False, clamd_address=None, nsfw=None) == []
    assert build_scanners(face_enabled=False, clamd_address="", nsfw="") == []


def test_factory_order_and_types() -> None:
    try:
        scanners = build_scanners(face_enabled=True, clamd_address="/run/x.sock", nsfw="noop")
    except RuntimeError:
        missing_tool("opencv-python-headless (the 'face' extra)")
    assert [type(s) for s in scanners] == [ClamdScanner, FaceDetector, NoopNsfwDetector]
    assert all(isinstance(s, Scanner) for s in scanners)


def test_nsfw_plugin_by_import_path() -> None:
    scanners = build_scanners(
        face_enabled=False, clamd_address=None, nsfw="shared.images.scanners:NoopNsfwDetector"
    )
    assert [type(s) for s in scanners] == [NoopNsfwDetector]


@pytest.mark.parametrize("spec", ["yes", "shared.images.scanners:", ":NoopNsfwDetector"])
def test_unknown_nsfw_spec_is_a_configuration_error(spec: str) -> None:
    with pytest.raises(ValueError):
        build_scanners(face_enabled=False, clamd_address=None, nsfw=spec)


def test_nsfw_plugin_must_look_like_a_scanner() -> None:
    with pytest.raises(TypeError):
        build_scanners(face_enabled=False, clamd_address=None, nsfw="builtins:object")


class _Rejecting:
    name = "reject"

    def __init__(self) -> None:
        self.calls = 0

    def scan(self, data: bytes, image: Image.Image) -> ScanVerdict | None:
        self.calls += 1
        return ScanVerdict("upload.test", "always")


def test_first_rejection_wins(astronaut: Image.Image) -> None:
    first, second = _Rejecting(), _Rejecting()
    assert run_scanners([NoopNsfwDetector(), first, second], b"", astronaut) == ScanVerdict(
        "upload.test", "always"
    )
    assert (first.calls, second.calls) == (1, 0)
