"""Pluggable content checks for uploads that already decoded (see shared.images.sanitize).

Every scanner is off unless configured. Each one answers ``scan(data, image)`` with
``None`` (accepted) or a :class:`ScanVerdict` (rejected, with a stable ``upload.*`` code).
A scanner that cannot answer raises :class:`ScannerUnavailable`: the caller must retry the
upload later and never treat "could not scan" as "clean".
"""

from __future__ import annotations

import importlib
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from PIL import Image

from shared.images.sanitize import apply_orientation


@dataclass(frozen=True)
class ScanVerdict:
    """A rejection. ``detail`` is for logs and never holds user data."""

    code: str
    detail: str


class ScannerUnavailable(Exception):
    """No verdict could be obtained (scanner down, timed out, or replied with an error)."""


# The stable codes of a scanner's rejection (the app sees them as error codes).
NO_FACE: Final = "upload.no_face"
MULTIPLE_FACES: Final = "upload.multiple_faces"
MALWARE: Final = "upload.malware"
NSFW: Final = "upload.nsfw"


@runtime_checkable
class Scanner(Protocol):
    name: str

    def scan(self, data: bytes, image: Image.Image) -> ScanVerdict | None:
        """Return None to accept, a verdict to reject; raise ScannerUnavailable if unsure."""
        ...


@runtime_checkable
class NsfwDetector(Scanner, Protocol):
    """Same shape as any scanner; a separate name so plug-ins can declare what they are."""


def run_scanners(
    scanners: Iterable[Scanner], data: bytes, image: Image.Image
) -> ScanVerdict | None:
    """First rejection wins; ScannerUnavailable propagates to the caller untouched."""
    for scanner in scanners:
        verdict = scanner.scan(data, image)
        if verdict is not None:
            return verdict
    return None


# --------------------------------------------------------------------------- faces


class FaceDetector:
    """Requires at least one frontal human face, using OpenCV's bundled Haar cascade.

    Deliberately simple and CPU-only: it exists to turn away photos of cats, cups and
    screenshots before they cost a paid try-on call, not to identify anyone.

    The defaults were tuned on the repo's fixtures (exactly one face in astronaut.jpg at
    original size, 3x, half size and mirrored; none in chelsea.jpg or coffee.jpg). The
    tipping points: scale_factor 1.05 also "finds" the flag patch on the astronaut's suit,
    and without a minimum size the cascade sees a 50px face in the coffee's saucer.
    """

    name = "face"

    def __init__(
        self,
        *,
        max_faces: int | None = None,
        min_face_fraction: float = 0.15,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        max_side: int = 640,
    ) -> None:
        if max_faces is not None and max_faces < 1:
            raise ValueError("max_faces must be >= 1 or None")
        self._cv2 = _import_cv2()  # fail at start-up, not on the first upload
        cascade_path = self._cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._classifier = self._cv2.CascadeClassifier(cascade_path)
        if self._classifier.empty():
            raise RuntimeError(f"could not load Haar cascade {cascade_path}")
        # Sharing one classifier across threads is not documented as safe.
        self._lock = threading.Lock()
        self._max_faces = max_faces
        self._min_face_fraction = min_face_fraction
        self._scale_factor = scale_factor
        self._min_neighbors = min_neighbors
        self._max_side = max_side

    def count_faces(self, image: Image.Image) -> int:
        grey = self._working_copy(image)
        import numpy as np  # optional: ships with opencv (the face extra), loaded on first use

        pixels = np.asarray(grey)
        # Selfies fill the frame; a minimum face size relative to the picture removes
        # the small false positives textures produce, and makes the scan faster.
        side = max(24, int(min(pixels.shape) * self._min_face_fraction))
        with self._lock:
            faces = self._classifier.detectMultiScale(
                pixels,
                scaleFactor=self._scale_factor,
                minNeighbors=self._min_neighbors,
                minSize=(side, side),
            )
        return len(faces)

    def scan(self, data: bytes, image: Image.Image) -> ScanVerdict | None:
        faces = self.count_faces(image)
        if faces == 0:
            return ScanVerdict(NO_FACE, "no frontal face detected")
        if self._max_faces is not None and faces > self._max_faces:
            return ScanVerdict(MULTIPLE_FACES, f"{faces} faces, at most {self._max_faces}")
        return None

    def _working_copy(self, image: Image.Image) -> Image.Image:
        # A frontal-face cascade cannot find a face lying on its side, so honour EXIF
        # orientation (a no-op for already-sanitised images, which have none).
        grey = apply_orientation(image).convert("L")
        # Detection cost grows with pixel count while accuracy does not; a fixed working
        # size also keeps the tuned parameters meaningful for 12 MP phone photos.
        if max(grey.size) > self._max_side:
            grey.thumbnail((self._max_side, self._max_side), Image.Resampling.BILINEAR)
        return grey


def _import_cv2() -> Any:
    try:
        return importlib.import_module("cv2")
    except ImportError as exc:
        raise RuntimeError(
            "face detection needs OpenCV: install the 'face' extra "
            "(pip install 'hairfluencer[face]')"
        ) from exc


# --------------------------------------------------------------------------- clamd


class ClamdScanner:
    """Streams the raw upload to clamd with INSTREAM and maps its answer.

    ``address`` is a unix socket path (``/run/clamav/clamd.ctl`` or ``unix:///...``) or
    ``tcp://host:port``. The raw bytes are scanned, not the decoded image, since that is
    what sits in storage.
    """

    name = "clamd"
    _MAX_REPLY: Final = 4096  # clamd replies are one short line

    def __init__(self, address: str, *, timeout: float = 30.0, chunk_size: int = 1 << 16):
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self._unix_path, self._tcp = _parse_clamd_address(address)
        self._timeout = timeout
        self._chunk_size = chunk_size

    def scan(self, data: bytes, image: Image.Image) -> ScanVerdict | None:
        return parse_instream_reply(self._instream(data))

    def ping(self) -> None:
        """Raise ScannerUnavailable unless clamd answers PONG (for health checks)."""
        with self._connection() as sock:
            sock.sendall(b"zPING\0")
            reply = _read_reply(sock, self._MAX_REPLY)
        if reply != "PONG":
            raise ScannerUnavailable(f"unexpected clamd PING reply {reply[:100]!r}")

    def _instream(self, data: bytes) -> str:
        with self._connection() as sock:
            try:
                # The "z" prefix asks for NUL-terminated replies; each chunk carries a
                # 4-byte big-endian length, and a zero length ends the stream.
                sock.sendall(b"zINSTREAM\0")
                view = memoryview(data)
                for start in range(0, len(view), self._chunk_size):
                    chunk = view[start : start + self._chunk_size]
                    sock.sendall(struct.pack(">I", len(chunk)))
                    sock.sendall(chunk)
                sock.sendall(struct.pack(">I", 0))
            except OSError:
                # clamd closes early when StreamMaxLength is exceeded, after writing
                # "INSTREAM size limit exceeded. ERROR"; prefer that reply to a bare EPIPE.
                pass
            return _read_reply(sock, self._MAX_REPLY)

    @contextmanager
    def _connection(self) -> Iterator[socket.socket]:
        sock = self._connect()
        try:
            yield sock
        except OSError as exc:  # timeouts included
            raise ScannerUnavailable(f"clamd I/O failed: {type(exc).__name__}") from exc
        finally:
            sock.close()

    def _connect(self) -> socket.socket:
        try:
            if self._unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                try:
                    sock.connect(self._unix_path)
                except OSError:
                    sock.close()
                    raise
                return sock
            assert self._tcp is not None
            return socket.create_connection(self._tcp, timeout=self._timeout)
        except OSError as exc:
            raise ScannerUnavailable(f"cannot reach clamd: {type(exc).__name__}") from exc


def _parse_clamd_address(address: str) -> tuple[str | None, tuple[str, int] | None]:
    if address.startswith("tcp://"):
        host, sep, port = address[len("tcp://") :].rstrip("/").rpartition(":")
        host = host.strip("[]")  # tcp://[::1]:3310
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("clamd address must look like tcp://host:port")
        return None, (host, int(port))
    path = address.removeprefix("unix://")
    if not path or "://" in path:
        raise ValueError("clamd address must be a unix socket path or tcp://host:port")
    return path, None


def _read_reply(sock: socket.socket, limit: int) -> str:
    """Read one NUL-terminated reply (or until EOF), bounded so a rogue peer can't OOM us."""
    buf = bytearray()
    while b"\0" not in buf and len(buf) < limit:
        chunk = sock.recv(1024)
        if not chunk:
            break
        buf += chunk
    return bytes(buf).split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def parse_instream_reply(reply: str) -> ScanVerdict | None:
    """Map clamd's INSTREAM reply: ``stream: OK`` / ``stream: <NAME> FOUND`` / errors."""
    if reply == "stream: OK":
        return None
    if reply.startswith("stream: ") and reply.endswith(" FOUND"):
        signature = reply[len("stream: ") : -len(" FOUND")].strip()
        return ScanVerdict(MALWARE, f"clamd signature {signature}")
    # "... ERROR" (size limit, out of memory, database reload), an empty reply because
    # the connection dropped, or anything unexpected: no verdict, so never "clean".
    raise ScannerUnavailable(f"clamd gave no verdict: {reply[:200]!r}")


# --------------------------------------------------------------------------- NSFW


class NoopNsfwDetector:
    """Accepts everything: the placeholder until a real model is plugged in."""

    name = "nsfw-noop"

    def scan(self, data: bytes, image: Image.Image) -> ScanVerdict | None:
        return None


def load_nsfw_detector(spec: str) -> NsfwDetector:
    """``"noop"``, or ``"package.module:factory"`` where ``factory()`` returns a detector."""
    if spec == "noop":
        return NoopNsfwDetector()
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError("nsfw detector must be 'noop' or 'package.module:factory'")
    factory = getattr(importlib.import_module(module_name), attribute)
    detector = factory()
    if not isinstance(detector, NsfwDetector):
        raise TypeError(f"{spec} did not produce an object with name and scan()")
    return detector


# --------------------------------------------------------------------------- factory


def build_scanners(
    face_enabled: bool,
    clamd_address: str | None,
    nsfw: str | None,
    *,
    max_faces: int | None = None,
) -> list[Scanner]:
    """The configured scanners, in the order they should run.

    clamd goes first: a malware verdict must win over "no face" so it gets reported and
    alerted on. The face check is cheaper than any NSFW model, so it comes before it.
    """
    scanners: list[Scanner] = []
    if clamd_address:
        scanners.append(ClamdScanner(clamd_address))
    if face_enabled:
        scanners.append(FaceDetector(max_faces=max_faces))
    if nsfw:
        scanners.append(load_nsfw_detector(nsfw))
    return scanners
