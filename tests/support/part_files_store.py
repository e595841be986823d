"""A data store written outside tusbridge, for the test that plugs one in by setting.

Each write goes to a part file of its own, ``<directory>/<upload id>/<offset>``;
reading joins the parts in order. It has no local path for a whole upload,
keeps no record copies and cannot concatenate: the service must work with
what it offers and advertise no more.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from tusbridge.data import DataStore, Writer


class PartWriter(Writer):
    def __init__(self, directory: Path, offset: int) -> None:
        self._directory = directory
        self._start = offset
        self._file = open(directory / f"{offset:020d}", "wb")  # noqa: SIM115 - closed by close()
        self._written = 0

    @property
    def written(self) -> int:
        return self._written

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._written += len(data)

    def sync(self) -> None:
        self._file.flush()

    def rollback(self) -> None:
        self._file.seek(0)
        self._file.truncate()
        self._written = 0

    def close(self) -> None:
        self._file.close()
        part = self._directory / f"{self._start:020d}"
        if part.exists() and part.stat().st_size == 0:
            part.unlink()


class PartFilesDataStore(DataStore):
    """Uploads as directories of part files, under ``settings.TEST_PART_FILES_DIR``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    @classmethod
    def from_settings(cls) -> PartFilesDataStore:
        return cls(settings.TEST_PART_FILES_DIR)

    def _parts(self, upload_id: str) -> list[Path]:
        return sorted((self.directory / upload_id).iterdir())

    def create(self, upload_id: str) -> None:
        (self.directory / upload_id).mkdir(parents=True)

    def writer(self, upload_id: str, offset: int) -> Writer:
        end = 0
        for part in self._parts(upload_id):
            start = int(part.name)
            if start >= offset:
                part.unlink()
            else:
                with open(part, "r+b") as fh:
                    fh.truncate(min(part.stat().st_size, offset - start))
                end = start + part.stat().st_size
        assert end == offset, f"parts end at {end}, not at {offset}"
        return PartWriter(self.directory / upload_id, offset)

    def open(self, upload_id: str) -> BinaryIO:
        return io.BytesIO(b"".join(part.read_bytes() for part in self._parts(upload_id)))

    def size(self, upload_id: str) -> int | None:
        if not (self.directory / upload_id).is_dir():
            return None
        return sum(part.stat().st_size for part in self._parts(upload_id))

    def remove(self, upload_id: str) -> None:
        shutil.rmtree(self.directory / upload_id, ignore_errors=True)

    def part_count(self, upload_id: str) -> int:
        return len(os.listdir(self.directory / upload_id))
