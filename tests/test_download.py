"""Checksum-verified downloads from a real local HTTP server, and zip extraction that cannot escape."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from episodes.datasets import omniglot, omniglot_source
from episodes.datasets.download import DownloadError, download_file, file_digest, safe_extract_zip


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated`` announces 1000 bytes and sends 10, like a dropped connection."""

    def do_GET(self) -> None:
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return


def _serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server over a folder holding ``hello.txt`` (fast tests, no shared data needed)."""
    served = tmp_path_factory.mktemp("served")
    (served / "hello.txt").write_bytes(b"hello omniglot\n" * 100)
    yield from _serve(served)


@pytest.fixture
def omniglot_server(shared_data: Path) -> Iterator[str]:
    """A server over the real ``shared/data/omniglot`` folder (skipped without it)."""
    yield from _serve(shared_data / "omniglot")


HELLO = b"hello omniglot\n" * 100


def test_small_download_verifies_md5_and_sha256(small_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "hello.txt"
    got = download_file(f"{small_server}/hello.txt", dest, md5=hashlib.md5(HELLO).hexdigest(),
                        sha256=hashlib.sha256(HELLO).hexdigest().upper(), timeout=10)
    assert got == dest and dest.read_bytes() == HELLO
    assert [p.name for p in dest.parent.iterdir()] == ["hello.txt"]


def test_checksum_mismatch_writes_nothing(small_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "hello.txt"
    with pytest.raises(ValueError, match=r"checksum mismatch .* expected md5 0+, got"):
        download_file(f"{small_server}/hello.txt", dest, md5="0" * 32, timeout=10)
    assert not list(tmp_path.iterdir())


def test_mismatch_keeps_an_existing_file(small_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "hello.txt"
    dest.write_bytes(b"old")
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(f"{small_server}/hello.txt", dest, sha256="f" * 64, timeout=10)
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["hello.txt"]


def test_http_404_raises_and_writes_nothing(small_server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{small_server}/missing.zip", tmp_path / "m.zip", md5="0" * 32, timeout=10)
    assert not list(tmp_path.iterdir())


def test_interrupted_download_writes_nothing(small_server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        download_file(f"{small_server}/truncated", tmp_path / "t.bin", md5="0" * 32, timeout=10)
    assert not list(tmp_path.iterdir())


def test_unreachable_server_and_missing_checksum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="md5= or sha256="):
        download_file("http://127.0.0.1:9/x", tmp_path / "x")
    with pytest.raises(DownloadError, match="failed"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", md5="0" * 32, timeout=5)
    assert not list(tmp_path.iterdir())


def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return path


def test_safe_extract_extracts_a_normal_zip(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ok.zip", {"top/a/b.txt": b"b", "top/c.txt": b"c", "other.txt": b"o"})
    created = safe_extract_zip(archive, tmp_path / "dest")
    assert sorted(p.name for p in created) == ["other.txt", "top"]
    assert (tmp_path / "dest" / "top" / "a" / "b.txt").read_bytes() == b"b"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["other.txt", "top"]
    with pytest.raises(FileExistsError, match="already exists"):
        safe_extract_zip(archive, tmp_path / "dest")


@pytest.mark.parametrize("members, symlink", [
    ({"ok.txt": b"1", "../evil.txt": b"x"}, None),
    ({"ok.txt": b"1", "a/../../evil.txt": b"x"}, None),
    ({"ok.txt": b"1", "/tmp/evil.txt": b"x"}, None),
    ({"ok.txt": b"1", "C:/evil.txt": b"x"}, None),
    ({"ok.txt": b"1"}, "link"),
])
def test_safe_extract_rejects_escaping_members(tmp_path: Path, members: dict[str, bytes],
                                               symlink: str | None) -> None:
    archive = _zip(tmp_path / "bad.zip", members, symlink)
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="unsafe zip"):
        safe_extract_zip(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.slow
def test_real_zip_download_and_extract(omniglot_server: str, shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "omniglot" / "images_evaluation.zip"
    dest = download_file(f"{omniglot_server}/images_evaluation.zip", tmp_path / "images_evaluation.zip",
                         md5=file_digest(source, "md5"), timeout=30)
    assert dest.read_bytes() == source.read_bytes()
    safe_extract_zip(dest, tmp_path / "x")
    assert len(list((tmp_path / "x" / "images_evaluation").glob("*/*/*.png"))) == 13180


@pytest.mark.slow
def test_real_zip_checksum_mismatch(omniglot_server: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(f"{omniglot_server}/images_background.zip", tmp_path / "b.zip",
                      md5=omniglot_source.OMNIGLOT_MD5["images_background"],  # official MD5: the copy differs
                      timeout=30)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_load_omniglot_download(omniglot_server: str, shared_data: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    md5 = {s: file_digest(shared_data / "omniglot" / f"{s}.zip", "md5") for s in omniglot.SETS}
    monkeypatch.setattr(omniglot_source, "OMNIGLOT_BASE_URL", omniglot_server)
    monkeypatch.setattr(omniglot_source, "OMNIGLOT_MD5", md5)
    root = tmp_path / "omniglot"
    dataset = omniglot.load_omniglot(root=root, download=True, protocol="alphabet", alphabets=["Greek"],
                                     image_size=14)
    assert sorted(p.name for p in root.glob("*.zip")) == ["images_background.zip", "images_evaluation.zip"]
    assert dataset.num_classes == 24 and len(dataset) == 480 and dataset.images.shape[1:] == (1, 14, 14)
    assert omniglot.download_omniglot(root) == []  # already there: nothing fetched


@pytest.mark.slow
def test_load_omniglot_download_404(omniglot_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omniglot_source, "OMNIGLOT_BASE_URL", f"{omniglot_server}/nowhere")
    with pytest.raises(DownloadError, match="HTTP 404"):
        omniglot.load_omniglot(root=tmp_path / "o", download=True)
    assert not any((tmp_path / "o").iterdir())
