"""Downloads that verify a checksum before anything lands in place, and zip extraction that refuses
members escaping the destination folder."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from episodes.files import atomic_write

__all__ = ["DownloadError", "download_file", "file_digest", "safe_extract_zip"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed (network error, HTTP error status, short read); nothing was written."""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest (``"md5"`` or ``"sha256"``) of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, verifying its checksum before it is moved into place.

    The body is streamed through :func:`episodes.files.atomic_write` (a temporary file beside
    ``dest``) while it is hashed; only when the length and checksum match is it renamed to ``dest``.
    A failed, interrupted or mismatching download removes the temporary file, so ``dest`` is either
    absent/unchanged or complete and verified.

    Args:
        url: http(s) or file URL.
        dest: the file to create (its folder is created if needed).
        md5, sha256: expected hex digest; give at least one (both are checked when given).
        timeout: seconds to wait for the server on connect and on each read.

    Returns:
        ``dest``.

    Raises:
        ValueError: no checksum given, or the downloaded bytes do not match it.
        DownloadError: the server answered with an error status, the connection failed, or the
            body was shorter than its Content-Length.
    """
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}
    if not expected:
        raise ValueError(f"download_file({url!r}): pass md5= or sha256= so the file can be verified")
    received = 0

    def fetch(tmp: Path) -> None:
        nonlocal received
        digests = {name: hashlib.new(name) for name in expected}
        with tmp.open("wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        received += len(chunk)
                        for digest in digests.values():
                            digest.update(chunk)
            except urllib.error.HTTPError as err:
                raise DownloadError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                raise DownloadError(f"downloading {url} failed: {err}; check the URL and your connection") from err
        if length is not None and received != int(length):
            raise DownloadError(f"downloading {url} stopped after {received} of {length} bytes; try again")
        for name, value in expected.items():
            actual = digests[name].hexdigest()
            if actual != value:
                raise ValueError(
                    f"checksum mismatch for {url}: expected {name} {value}, got {actual}. The file is corrupt or "
                    "was changed upstream; nothing was written. Retry, or pass the checksum of a file you trust."
                )

    dest = atomic_write(dest, fetch)
    logger.info("downloaded %s (%d bytes) to %s", url, received, dest)
    return dest


def _check_member(info: zipfile.ZipInfo, zip_path: Path) -> PurePosixPath:
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise ValueError(f"unsafe zip {zip_path}: member {name!r} would be written outside the destination")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ValueError(f"unsafe zip {zip_path}: member {name!r} is a symbolic link")
    return path


def safe_extract_zip(zip_path: Path, dest: Path) -> list[Path]:
    """Extract ``zip_path`` into ``dest``, refusing anything that could escape it.

    Every member is checked before anything is written: absolute names, drive letters, ``..``
    components and symbolic links are rejected. Members are extracted to a temporary folder inside
    ``dest`` and its top-level entries then renamed into place, so a failure leaves ``dest`` as it was.

    Returns:
        The top-level paths created in ``dest``.

    Raises:
        ValueError: a member is unsafe (nothing is extracted).
        FileExistsError: a top-level entry of the zip already exists in ``dest``.
        zipfile.BadZipFile: the file is not a zip or is corrupt.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    with open_zip(zip_path) as archive:
        members = archive.infolist()
        tops = sorted({_check_member(info, zip_path).parts[0] for info in members if info.filename.strip("/")})
        existing = [top for top in tops if (dest / top).exists()]
        if existing:
            raise FileExistsError(f"extracting {zip_path}: {dest / existing[0]} already exists; remove it first")
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            archive.extractall(staging)
            for top in tops:
                os.replace(staging / top, dest / top)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [dest / top for top in tops]


def open_zip(path: str | os.PathLike[str]) -> zipfile.ZipFile:
    """``zipfile.ZipFile(path)`` whose error for a truncated or damaged archive names the file and what to do.

    Raises:
        zipfile.BadZipFile: not a zip archive, or a damaged one.
    """
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise zipfile.BadZipFile(f"{path} is not a readable zip archive ({err}): it is truncated or damaged; "
                                 "download it again (or delete it and pass download=true)") from err
