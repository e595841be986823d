"""A three-node Redis Cluster as real redis-server processes on free loopback ports."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import redis

from tests.support.servers import free_port, terminate, wait_until

SLOTS = 16384


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher, at most 65535) is free too."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterGroup:
    """``start()`` runs three masters (no replicas), gives each a third of the slots and joins them."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.ports = [cluster_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            log = open(self.directory / f"node-{port}.log", "ab")  # noqa: SIM115 - the process keeps it
            self.processes.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--dir",
                        str(self.directory),
                    ],  # fmt: skip
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for port in self.ports:
            wait_until(lambda port=port: bool(self.node(port).ping()), f"node {port}")
        share = SLOTS // len(self.ports)
        for index, port in enumerate(self.ports):
            first = index * share
            last = SLOTS - 1 if index == len(self.ports) - 1 else first + share - 1
            slots = list(range(first, last + 1))
            for start in range(0, len(slots), 1000):
                self.node(port).execute_command("CLUSTER", "ADDSLOTS", *slots[start : start + 1000])
        for port in self.ports[1:]:
            self.node(self.ports[0]).execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        for port in self.ports:
            wait_until(lambda port=port: self.node(port).cluster("info")["cluster_state"] == "ok", f"node {port} ok")

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        for process in self.processes:
            terminate(process, 5.0)
        self.processes = []
