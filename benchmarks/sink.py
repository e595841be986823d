"""The ceiling: a trivial HTTP sink on raw sockets that writes request bodies to files.

It speaks just enough of both protocols for ``client.py`` (tus POST/PATCH/HEAD,
legacy chunk and completion POSTs), keeps connections alive, uses one thread
per connection, and moves each body from the socket to its file through one
fixed buffer (``recv_into`` + ``pwrite``). No validation, no records, no
framework: what is left is the cost of the client, the loopback and the disk.

Usage: python sink.py PORT DIRECTORY
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import uuid

BUFFER = 1 << 20

uploads: dict[str, list[int]] = {}  # id -> [offset, length]
uploads_lock = threading.Lock()


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock: socket.socket, directory: str) -> None:
        self.sock = sock
        self.directory = directory
        self.buffer = bytearray(BUFFER)
        self.pending = b""  # bytes received past the last request head

    def read_head(self) -> tuple[str, str, dict[str, str]]:
        data = self.pending
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(65536)
            if not more:
                raise Closed()
            data += more
        head, _, self.pending = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return method, target, headers

    def read_exact(self, n: int) -> bytes:
        """Small bodies (forms, multipart preambles): read into memory."""
        data = self.pending
        while len(data) < n:
            more = self.sock.recv(max(65536, n - len(data)))
            if not more:
                raise Closed()
            data += more
        self.pending = data[n:]
        return data[:n]

    def body_to_file(self, fd: int, position: int, n: int) -> None:
        """Move ``n`` body bytes to ``fd`` at ``position`` through the fixed buffer."""
        if self.pending:
            first = self.pending[:n]
            self.pending = self.pending[n:]
            os.pwrite(fd, first, position)
            position += len(first)
            n -= len(first)
        view = memoryview(self.buffer)
        while n > 0:
            got = self.sock.recv_into(view[: min(len(view), n)])
            if not got:
                raise Closed()
            written = 0
            while written < got:
                written += os.pwrite(fd, view[written:got], position + written)
            position += got
            n -= got

    def respond(self, status: str, headers: dict[str, str], body: bytes = b"") -> None:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def path_of(self, upload_id: str) -> str:
        return os.path.join(self.directory, upload_id)

    def serve(self) -> None:
        while True:
            method, target, headers = self.read_head()
            length = int(headers.get("content-length", "0"))
            if method == "POST" and target.startswith("/files"):
                upload_id = uuid.uuid4().hex
                with uploads_lock:
                    uploads[upload_id] = [0, int(headers.get("upload-length", "0"))]
                os.close(os.open(self.path_of(upload_id), os.O_WRONLY | os.O_CREAT, 0o600))
                self.read_exact(length)
                self.respond("201 Created", {"Location": f"/files/{upload_id}", "Tus-Resumable": "1.0.0"})
            elif method == "PATCH":
                upload_id = target.rstrip("/").rsplit("/", 1)[-1]
                state = uploads[upload_id]
                fd = os.open(self.path_of(upload_id), os.O_WRONLY)
                try:
                    self.body_to_file(fd, int(headers["upload-offset"]), length)
                finally:
                    os.close(fd)
                state[0] = int(headers["upload-offset"]) + length
                self.respond("204 No Content", {"Upload-Offset": str(state[0]), "Tus-Resumable": "1.0.0"})
            elif method == "HEAD":
                upload_id = target.rstrip("/").rsplit("/", 1)[-1]
                offset, total = uploads[upload_id]
                self.sock.sendall(
                    f"HTTP/1.1 200 OK\r\nUpload-Offset: {offset}\r\nUpload-Length: {total}\r\n"
                    "Tus-Resumable: 1.0.0\r\nContent-Length: 0\r\n\r\n".encode()
                )
            elif method == "POST" and target.endswith("/chunked_upload/"):
                self.legacy_chunk(headers, length)
            elif method == "POST":  # legacy completion
                self.read_exact(length)
                self.respond("200 OK", {"Content-Type": "application/json"}, b"{}")
            else:
                self.read_exact(length)
                self.respond("404 Not Found", {})

    def legacy_chunk(self, headers: dict[str, str], length: int) -> None:
        """Fields come first: read up to the file part's headers, stream the part, drop the epilogue."""
        boundary = headers["content-type"].split("boundary=", 1)[1].strip('"')
        epilogue = len(f"\r\n--{boundary}--\r\n")
        data = self.pending
        marker = b'name="file"'
        while True:
            at = data.find(marker)
            end = data.find(b"\r\n\r\n", at) if at >= 0 else -1
            if end >= 0:
                break
            more = self.sock.recv(65536)
            if not more:
                raise Closed()
            data += more
        preamble = data[: end + 4]
        self.pending = data[end + 4 :]
        fields = {}
        for part in preamble.split(f"--{boundary}".encode())[1:-1]:
            head, _, value = part.partition(b"\r\n\r\n")
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            fields[name] = value[:-2].decode()
        start, _, total = headers["content-range"].split(" ", 1)[1].partition("/")
        start = int(start.split("-")[0])
        upload_id = fields.get("upload_id") or uuid.uuid4().hex
        n = length - len(preamble) - epilogue
        path = self.path_of(upload_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            self.body_to_file(fd, start, n)
        finally:
            os.close(fd)
        self.read_exact(epilogue)
        body = json.dumps({"upload_id": upload_id, "offset": start + n, "expires": ""}).encode()
        self.respond("200 OK", {"Content-Type": "application/json"}, body)


def handle(sock: socket.socket, directory: str) -> None:
    try:
        Conn(sock, directory).serve()
    except (Closed, ConnectionError):
        pass
    finally:
        sock.close()


def main() -> None:
    port, directory = int(sys.argv[1]), sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    print(f"sink on http://127.0.0.1:{port}/ storing in {directory}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock, directory), daemon=True).start()


if __name__ == "__main__":
    main()
