"""Cluster environments built into core, registered through ``switchyard_environments``."""

from __future__ import annotations

import os
import socket

from switchyard.environment import ClusterEnvironment


def find_free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``address`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class LocalEnvironment(ClusterEnvironment):
    """One machine (or nodes started by hand with ``switchyard run --node-rank``), where switchyard
    starts the processes itself. Reads ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK`` and, in the
    processes switchyard started, ``LOCAL_RANK``; anything missing gets a local default."""

    def __init__(self) -> None:
        self._world_size = 1
        self._global_rank = 0
        self._main_port: int | None = None

    @classmethod
    def detect(cls) -> bool:
        return True

    @property
    def creates_processes_externally(self) -> bool:
        # our own launchers export LOCAL_RANK to the processes they start
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self._main_port is None:
            env_port = os.environ.get("MASTER_PORT")
            self._main_port = int(env_port) if env_port else find_free_port(self.main_address)
        return self._main_port

    def world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", self._world_size))

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return int(os.environ.get("RANK", self._global_rank))

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        return int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
