"""An S3 emulator for the S3 data store's tests: moto in server mode, a real S3 HTTP API on a free port.

moto's server (``python -m moto.server``) answers the S3 REST API over HTTP
as AWS does, enforcing the rules that matter here (parts of at least 5 MiB,
ETags, UploadPartCopy, NoSuchUpload after completion or abort); boto3 talks
to it exactly as to AWS. It runs as a subprocess, so the tests' process
measures only its own memory, and it keeps everything in its memory.

The fixtures are imported by the test modules that use them
(``from tests.support.s3 import s3_bucket, s3_server``): one server serves
every module of the session. ``s3_bucket`` gives each test a bucket of its
own and, after the test, asserts that no multipart upload in it is one that
tusbridge forgot (every one must be named by its upload's tail object).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.servers import free_port, tail, terminate

# Dummy credentials for boto3's usual chain (the emulator accepts any); no profile or file of the machine's.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
REGION = "us-east-1"


@dataclass
class MotoServer:
    """A moto_server process answering the S3 API on ``url``."""

    url: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        """A boto3 S3 client on the emulator (path-style, as the store uses with an endpoint)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=REGION, config=Config(s3={"addressing_style": "path"})
        )

    def stop(self) -> None:
        terminate(self.process, 10)


def start_moto(directory: Path, timeout: float = 30.0) -> MotoServer:
    """``python -m moto.server`` on a free loopback port, once it answers HTTP."""
    log_path = directory / "moto.log"
    problem = ""
    for _attempt in range(3):
        port = free_port()
        env = {**os.environ, **CREDENTIALS}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                return MotoServer(url, port, log_path, process)
            except requests.RequestException:
                time.sleep(0.1)
        terminate(process, 5)
        problem = tail(log_path)
    pytest.fail(f"moto_server did not start:\n{problem}", pytrace=False)


_shared: list[MotoServer] = []
_users = [0]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """The session's S3 emulator, with dummy credentials in the environment (skipped in the fast tier)."""
    if os.environ.get("TUSBRIDGE_TEST_STORES") == "memory":
        pytest.skip("the fast tier runs without the S3 emulator")
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    if not _shared:
        saved = {name: os.environ.get(name) for name in CREDENTIALS}
        os.environ.update(CREDENTIALS)
        try:
            _shared.append(start_moto(tmp_path_factory.mktemp("moto")))
        except BaseException:
            _restore(saved)
            raise
        _saved_environment.update(saved)
    _users[0] += 1
    try:
        yield _shared[0]
    finally:
        # Imported into several modules, the fixture is set up once per module: the last one stops it.
        _users[0] -= 1
        if _users[0] == 0:
            _shared.pop().stop()
            _restore(dict(_saved_environment))


_saved_environment: dict[str, str | None] = {}


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> Iterator[str]:
    """A new, empty bucket; afterwards, no multipart upload in it that tusbridge forgot."""
    bucket = f"t-{uuid.uuid4().hex}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    yield bucket
    forgotten = forgotten_multipart_uploads(client, bucket)
    _empty(client, bucket)
    assert forgotten == [], f"multipart uploads left in progress that no tail object names: {forgotten}"


def multipart_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        uploads += page.get("Uploads", [])
    return uploads


def forgotten_multipart_uploads(client: Any, bucket: str) -> list[str]:
    """Multipart uploads in progress that no upload's tail object (``<key>.part``) names: leaked ones."""
    forgotten = []
    for upload in multipart_uploads(client, bucket):
        try:
            head = client.head_object(Bucket=bucket, Key=upload["Key"] + ".part")
        except client.exceptions.ClientError:
            forgotten.append(upload["Key"])
            continue
        if head["Metadata"].get("multipart-upload") != upload["UploadId"]:
            forgotten.append(upload["Key"])
    return forgotten


def object_keys(client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [entry["Key"] for entry in page.get("Contents", [])]
    return sorted(keys)


def _empty(client: Any, bucket: str) -> None:
    """Free the emulator's memory: abort every multipart upload, delete every object and the bucket."""
    for upload in multipart_uploads(client, bucket):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for key in object_keys(client, bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)


class Calls:
    """The S3 operations a boto3 client sent (botocore's ``before-call`` event), in order."""

    def __init__(self, client: Any) -> None:
        self.names: list[str] = []
        # (operation, key) of each call.
        self.keys: list[tuple[str, str]] = []
        client.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, params: Any = None, **kwargs: Any) -> None:
        self.names.append(model.name)
        key = params.get("url_path", "") if isinstance(params, dict) else ""
        self.keys.append((model.name, str(key).partition("?")[0]))

    def clear(self) -> None:
        self.names.clear()
        self.keys.clear()

    def count(self, name: str) -> int:
        return self.names.count(name)
