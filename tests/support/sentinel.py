"""A Redis primary, its replica and three sentinels as real processes on free loopback ports."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis

from tests.support.servers import free_port, terminate, wait_until

SERVICE = "tusbridge-primary"


class SentinelGroup:
    """``start()`` runs a primary, a replica of it and three sentinels watching them (quorum 2).

    ``kill_primary()`` SIGKILLs whichever server is primary now; the sentinels
    then promote the other one (after ``down_after_ms``). Nothing is persisted.
    """

    def __init__(self, binary: str, directory: Path, *, down_after_ms: int = 1000) -> None:
        self.binary = binary
        self.directory = directory
        self.down_after_ms = down_after_ms
        self.server_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        primary, replica = self.server_ports
        self._start_server(primary)
        self._start_server(replica, "--replicaof", "127.0.0.1", str(primary))
        wait_until(lambda: self.client(replica).info("replication").get("master_link_status") == "up", "replication")
        for port in self.sentinel_ports:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            log = open(self.directory / f"sentinel-{port}.log", "ab")  # noqa: SIM115 - the process keeps it
            self.sentinels.append(
                subprocess.Popen([self.binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT)
            )
        for port in self.sentinel_ports:
            wait_until(lambda port=port: self._sentinel_knows_replica(port), f"sentinel {port}")

    def primary_port(self) -> int:
        answer = self.client(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)
        return int(answer[1])

    def kill_primary(self) -> int:
        port = self.primary_port()
        process = self.servers.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait()
        return port

    def wait_for_new_primary(self, old: int, timeout: float = 30.0) -> int:
        wait_until(lambda: self.primary_port() != old, "a failover", timeout)
        new = self.primary_port()
        wait_until(lambda: self.client(new).info("replication")["role"] == "master", "the new primary", timeout)
        return new

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers.values()]:
            terminate(process, 5.0)
        self.sentinels, self.servers = [], {}

    def _start_server(self, port: int, *args: str) -> None:
        log = open(self.directory / f"redis-{port}.log", "ab")  # noqa: SIM115 - the process keeps it
        self.servers[port] = subprocess.Popen(
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
                "--dir",
                str(self.directory),
                *args,
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: bool(self.client(port).ping()), f"redis {port}")

    def _sentinel_knows_replica(self, port: int) -> bool:
        replicas = self.client(port).sentinel_slaves(SERVICE)
        return any(int(r["port"]) == self.server_ports[1] for r in replicas)
