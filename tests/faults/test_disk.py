"""A full or failing disk under a live gunicorn: a real small filesystem as the upload directory.

The upload directory is a 2 MiB tmpfs mounted for this module (root only,
as in CI); where tmpfs cannot be mounted, an ext4 image on a loop device is
tried; where neither works the tests skip and say why. Which one ran is
printed. "Disk full" is real ENOSPC from the kernel: a filler file takes
the space and deleting it frees the space again.

- A tus PATCH that runs out of space answers 507 with a message; the offset
  stays at the last byte really written (HEAD offset == file size, the file
  is the source prefix), and once space is freed the upload resumes and
  finishes with the source's sha256.
- A legacy chunk that runs out of space answers 507 and counts none of its
  bytes; re-sent after space is freed it is stored and the md5 completion
  verifies. A first chunk leaves nothing behind.
- Creating an upload on a full disk answers 507 and leaves nothing.
- EIO: an ext4 image on a loop device is shut down (EXT4_IOC_SHUTDOWN, what
  xfstests' ``godown`` does) in the middle of a body: every later write
  fails with EIO, as on a dying disk. The request answers 500 with a message
  naming the I/O error; after the filesystem is mounted again the upload
  resumes from its offset.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.data import md5, payload, sha256, upload_id_of
from tests.support.faults import (
    User,
    file_bytes,
    json_of,
    legacy_chunk,
    legacy_chunk_request,
    legacy_complete,
    login,
    send_and_answer,
    settled_offset,
    tus_create,
    tus_head,
    tus_patch,
    tus_patch_request,
)
from tests.support.live import record_of, wait_drained
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live

FS_SIZE = 2 * 1024 * 1024
#: _IOR('X', 125, __u32): shut an ext4 filesystem down; flag 0 syncs it first.
EXT4_IOC_SHUTDOWN = 0x8004587D


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def _ext4_image(image: Path, size: int) -> str | None:
    """Make an ext4 image; the problem if that cannot be done."""
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 is not installed"
    with image.open("wb") as fh:
        fh.truncate(size)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    return None if made.returncode == 0 else f"mkfs.ext4: {made.stderr.strip()}"


@dataclass
class SmallDisk:
    path: Path
    method: str
    image: Path | None = None

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    @property
    def filler(self) -> Path:
        return self.path / "filler.bin"

    def fill(self, leave: int = 0) -> None:
        """Take all free space but about ``leave`` bytes (0: until the kernel says ENOSPC)."""
        with self.filler.open("ab", buffering=0) as fh:
            if leave:
                remaining = max(self.free() - leave, 0)
                while remaining > 0:
                    remaining -= fh.write(b"\0" * min(65536, remaining))
                return
            for block in (65536, 512, 1):  # down to the last byte of the last block
                try:
                    while True:
                        fh.write(b"\0" * block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)

    def clear(self) -> None:
        for child in self.path.iterdir():
            if child.is_file():
                child.unlink()

    def names(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if p.name not in ("filler.bin", "lost+found")}


def mount_small_disk(path: Path, image: Path) -> tuple[SmallDisk | None, list[str]]:
    """A small filesystem at ``path``: tmpfs, else ext4 on a loop device; else why not."""
    problems = []
    if os.geteuid() != 0:
        return None, ["not root: mounting a filesystem needs root (CI runs as root)"]
    if shutil.which("mount") is None:
        return None, ["no mount command"]
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tmpfs", str(path))
    if mounted.returncode == 0:
        return SmallDisk(path, f"tmpfs size={FS_SIZE // 1024} KiB"), problems
    problems.append(f"tmpfs: {mounted.stderr.strip()}")
    problem = _ext4_image(image, FS_SIZE * 2)
    if problem is None:
        mounted = _run("mount", "-o", "loop", str(image), str(path))
        if mounted.returncode == 0:
            return SmallDisk(path, f"ext4 on a loop device, {FS_SIZE * 2 // 1024} KiB", image), problems
        problem = f"mount -o loop: {mounted.stderr.strip()}"
    problems.append(f"ext4 loop: {problem}")
    return None, problems


def unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallDisk]:
    base = tmp_path_factory.mktemp("small-disk")
    path = base / "uploads"
    path.mkdir()
    disk, problems = mount_small_disk(path, base / "disk.img")
    if disk is None:
        pytest.skip("no small filesystem could be mounted for the disk-full tests: " + "; ".join(problems))
    print(f"\ndisk-full tests run on a real filesystem: {disk.method} at {path}")
    try:
        yield disk
    finally:
        unmount(path)


@pytest.fixture(scope="module")
def server(small_disk: SmallDisk, gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return gunicorn_factory({"TUSBRIDGE_TEST_UPLOAD_DIR": str(small_disk.path), "TUSBRIDGE_TEST_READ_SIZE": "65536"})


@pytest.fixture
def disk(small_disk: SmallDisk) -> Iterator[SmallDisk]:
    """The small disk, emptied before and after each test."""
    small_disk.clear()
    try:
        yield small_disk
    finally:
        small_disk.release()
        small_disk.clear()


@pytest.fixture(scope="module")
def user(server: GunicornServer) -> User:
    return login(server, f"disk-{uuid.uuid4().hex[:8]}")


def assert_consistent(disk: SmallDisk, url: str, user: User, data: bytes) -> int:
    """HEAD's offset is exactly the data file's size and the file is the source prefix."""
    offset = settled_offset(url, user)
    stored = file_bytes(disk.path / upload_id_of(url))
    assert stored is not None
    assert len(stored) == offset, f"HEAD says {offset} bytes, the data file holds {len(stored)}"
    assert stored == data[:offset]
    return offset


def test_tus_patch_out_of_space_answers_507_and_resumes(server: GunicornServer, disk: SmallDisk, user: User) -> None:
    data = payload(900_000, 1, kind="random")
    url = tus_create(server, user, len(data))
    assert tus_patch(server, user, url, 0, data[:200_000]).status == 204
    disk.fill(leave=300_000)

    reply = send_and_answer(tus_patch_request(server, user, url, 200_000, len(data) - 200_000), data[200_000:])
    assert reply is not None, "no answer to the PATCH that ran out of space"
    assert reply.status == 507, (reply.status, reply.body)
    assert b"space" in reply.body.lower()
    offset = assert_consistent(disk, url, user, data)
    assert 200_000 <= offset < len(data)

    disk.release()
    reply = tus_patch(server, user, url, offset, data[offset:])
    assert reply.status == 204 and reply.headers["Upload-Offset"] == str(len(data))
    assert record_of(server, upload_id_of(url))["state"] == "complete"
    assert sha256(file_bytes(disk.path / upload_id_of(url)) or b"") == sha256(data)


def test_legacy_chunk_out_of_space_answers_507_counts_nothing_and_resumes(
    server: GunicornServer, disk: SmallDisk, user: User
) -> None:
    chunk = 150_000
    data = payload(3 * chunk, 2, kind="random")
    first = legacy_chunk(server, user, None, 0, data[:chunk], len(data))
    assert first.status == 200, first.body
    upload_id = json_of(first)["upload_id"]
    disk.fill(leave=60_000)

    request, body = legacy_chunk_request(server, user, upload_id, chunk, data[chunk : 2 * chunk], len(data))
    reply = send_and_answer(request, body)
    assert reply is not None and reply.status == 507, reply
    assert json_of(reply) == {"detail": "No space left to store the upload"}
    assert record_of(server, upload_id)["offset"] == str(chunk)
    assert file_bytes(disk.path / upload_id) == data[:chunk], "a refused chunk left bytes in the data file"
    assert settled_offset(f"{server.files_url}{upload_id}", user) == chunk

    # A new upload's first chunk on the full disk leaves nothing behind.
    names = disk.names()
    request, body = legacy_chunk_request(server, user, None, 0, payload(120_000, 3, kind="random"), 120_000)
    reply = send_and_answer(request, body)
    assert reply is not None and reply.status == 507, reply
    assert disk.names() == names

    disk.release()
    for start in (chunk, 2 * chunk):
        reply = legacy_chunk(server, user, upload_id, start, data[start : start + chunk], len(data))
        assert reply.status == 200, reply.body
        assert json_of(reply)["offset"] == start + chunk
    done = legacy_complete(server, user, upload_id, md5(data))
    assert done.status_code == 200, done.text
    assert sha256(file_bytes(disk.path / upload_id) or b"") == sha256(data)


def test_tus_creation_on_a_full_disk_answers_507_and_leaves_nothing(
    server: GunicornServer, disk: SmallDisk, user: User
) -> None:
    disk.fill()
    names, keys = disk.names(), set(server.keys())
    response = requests.post(server.files_url, headers=user.tus(**{"Upload-Length": "1000"}), timeout=30)
    assert response.status_code == 507, (response.status_code, response.text[:300])
    assert "space" in response.text.lower()
    assert disk.names() == names, "a refused creation left files behind"
    assert set(server.keys()) == keys, "a refused creation left a record behind"

    disk.release()
    url = tus_create(server, user, 1000)
    assert tus_patch(server, user, url, 0, payload(1000, 4, kind="random")).status == 204


def test_deferred_length_patch_out_of_space_keeps_offset_and_file_in_step(
    server: GunicornServer, disk: SmallDisk, user: User
) -> None:
    """The PATCH that declares the length runs out of space: offset == file size, then it resumes."""
    data = payload(700_000, 5, kind="random")
    url = tus_create(server, user, None)
    assert tus_patch(server, user, url, 0, data[:100_000]).status == 204
    disk.fill(leave=200_000)

    request = tus_patch_request(server, user, url, 100_000, len(data) - 100_000, **{"Upload-Length": str(len(data))})
    reply = send_and_answer(request, data[100_000:])
    assert reply is not None, "no answer to the PATCH that ran out of space"
    # First what matters most: the offset counts exactly the bytes in the file.
    offset = assert_consistent(disk, url, user, data)
    assert reply.status == 507, (reply.status, reply.body[:300])

    disk.release()
    extra = {} if tus_head(url, user).headers.get("Upload-Length") else {"Upload-Length": str(len(data))}
    reply = tus_patch(server, user, url, offset, data[offset:], **extra)
    assert reply.status == 204 and reply.headers["Upload-Offset"] == str(len(data))
    assert sha256(file_bytes(disk.path / upload_id_of(url)) or b"") == sha256(data)


# EIO --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ext4_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallDisk]:
    base = tmp_path_factory.mktemp("eio-disk")
    path, image = base / "uploads", base / "eio.img"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("EIO test: mounting an ext4 image needs root (CI runs as root)")
    problem = _ext4_image(image, 16 * 1024 * 1024)
    if problem is None:
        mounted = _run("mount", "-o", "loop", str(image), str(path))
        problem = None if mounted.returncode == 0 else f"mount -o loop: {mounted.stderr.strip()}"
    if problem is not None:
        pytest.skip(f"EIO not testable here: no ext4 loop filesystem ({problem})")
    print(f"\nEIO test runs on ext4 on a loop device at {path}, shut down with EXT4_IOC_SHUTDOWN")
    try:
        yield SmallDisk(path, "ext4 loop", image)
    finally:
        unmount(path)


@pytest.fixture(scope="module")
def eio_server(ext4_disk: SmallDisk, gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return gunicorn_factory({"TUSBRIDGE_TEST_UPLOAD_DIR": str(ext4_disk.path), "TUSBRIDGE_TEST_READ_SIZE": "65536"})


def shut_down(disk: SmallDisk) -> None:
    fd = os.open(disk.path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", 0))
    except OSError as exc:
        pytest.skip(f"EIO not testable here: EXT4_IOC_SHUTDOWN refused ({exc})")
    finally:
        os.close(fd)


def repair(disk: SmallDisk) -> None:
    """What an operator does after replacing the disk: mount it again."""
    unmount(disk.path)
    assert disk.image is not None
    mounted = _run("mount", "-o", "loop", str(disk.image), str(disk.path))
    assert mounted.returncode == 0, mounted.stderr


@pytest.mark.parametrize("protocol", ["tus", "legacy"])
def test_io_error_mid_body_answers_500_with_a_message_and_resumes_after_repair(
    eio_server: GunicornServer, ext4_disk: SmallDisk, protocol: str
) -> None:
    server, disk = eio_server, ext4_disk
    user = login(server, f"eio-{protocol}")
    chunk = 400_000
    data = payload(3 * chunk, 6, kind="random")
    if protocol == "tus":
        url = tus_create(server, user, len(data))
        assert tus_patch(server, user, url, 0, data[:chunk]).status == 204
        request = tus_patch_request(server, user, url, chunk, chunk)
        body = data[chunk : 2 * chunk]
        cut = 150_000
    else:
        first = legacy_chunk(server, user, None, 0, data[:chunk], len(data))
        assert first.status == 200, first.body
        url = f"{server.files_url}{json_of(first)['upload_id']}"
        request, body = legacy_chunk_request(server, user, upload_id_of(url), chunk, data[chunk : 2 * chunk], len(data))
        cut = 150_000
    upload_id = upload_id_of(url)
    request.send(body[:cut])
    wait_drained(server, request)  # these bytes were written before the disk failed
    shut_down(disk)
    try:
        reply = send_and_answer(request, body[cut:])
        assert reply is not None, "no answer to the request whose writes failed"
        assert reply.status == 500, (reply.status, reply.body[:300])
        text = reply.body.decode("utf-8", "replace")
        if protocol == "legacy":
            assert reply.headers.get("Content-Type") == "application/json", text[:300]
            assert "could not be written" in json_of(reply)["detail"]
            assert "Input/output error" in json_of(reply)["detail"]
        else:
            assert "could not be written" in text and "Input/output error" in text, text[:300]
        offset_after_error = settled_offset(url, user)
    finally:
        repair(disk)

    # The offset counts no byte the disk does not have. (The failed request could not cut off what it
    # wrote before the error: the disk refused even that; the next write does.)
    assert offset_after_error >= chunk
    offset = settled_offset(url, user)
    assert offset == offset_after_error
    stored = file_bytes(disk.path / upload_id)
    assert stored is not None and len(stored) >= offset
    assert stored[:offset] == data[:offset]
    if protocol == "tus":
        reply = tus_patch(server, user, url, offset, data[offset:])
        assert reply.status == 204 and reply.headers["Upload-Offset"] == str(len(data))
    else:
        assert offset == chunk  # a legacy chunk counts whole or not at all
        for start in range(offset, len(data), chunk):
            reply = legacy_chunk(server, user, upload_id, start, data[start : start + chunk], len(data))
            assert reply.status == 200, reply.body
        assert legacy_complete(server, user, upload_id, md5(data)).status_code == 200
    assert sha256(file_bytes(disk.path / upload_id) or b"") == sha256(data)
