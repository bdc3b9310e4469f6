"""A Redis server for the tests: the one on 127.0.0.1:6379 when it answers (in a database
of its own, flushed first), else a throwaway `redis-server` on a free port. Never a skip:
the Redis backend is tested everywhere, and CI installs the server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# far from the 0 a local gateway would use; several checkouts testing at once on one
# machine each set a database of their own
TEST_DB = int(os.environ.get("LOCKGATE_TEST_REDIS_DB", "15"))


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workdir: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed and nothing answers on 127.0.0.1:6379; install it (apt-get install redis-server)", pytrace=False)
    port = free_port()
    log = (workdir / "redis.log").open("wb")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not answers_ping(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"redis-server did not start:\n{(workdir / 'redis.log').read_text()}", pytrace=False)
        time.sleep(0.05)
    return process, port


def pytest_sessionstart(session: pytest.Session) -> None:
    """The shared server's test database starts empty: flushed once, by the process that
    runs the session (under pytest-xdist, the controller, before any worker runs a test;
    a worker flushing it would wipe its siblings' keys mid-test)."""
    if not hasattr(session.config, "workerinput") and answers_ping(6379):
        with redis.Redis(host="127.0.0.1", port=6379, db=TEST_DB) as client:
            client.flushdb()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = None
    if answers_ping(6379):
        port = 6379  # its test database was flushed at the session's start
    else:
        # a throwaway server of this process's own (one per xdist worker), empty
        process, port = start_server(tmp_path_factory.mktemp("redis"))
    url = f"redis://127.0.0.1:{port}/{TEST_DB}"
    yield url
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_prefix() -> str:
    """Keys of their own for each test, so tests never see each other's state."""
    return f"lockgate-test:{uuid.uuid4().hex[:12]}:"
