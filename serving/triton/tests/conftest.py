"""The server under test: serve.py started once on loopback with the tiny model on the CPU
(two instances, a queue of four), shared by the tests and stopped by the last one.

Environment (the Makefile sets it): MODEL_DIR (the tiny model), IMAGE (an RGBA cut-out),
RECON_LIBRARY (librecon.so).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Set

import pytest

TRITON_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRITON_DIR))

INSTANCES = 2
MAX_QUEUE_SIZE = 4
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 90.0


def free_ports(count: int) -> List[int]:
    """Ports free on loopback right now (held open together so that they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def descendants(pid: int) -> Set[int]:
    """`pid` and every process below it, from /proc."""
    children: dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children.get(current, []))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, already dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def die_with_pytest() -> None:
    """In serve.py's process: SIGTERM when pytest dies, so a crashed run leaves no server."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


@dataclass
class Server:
    process: "subprocess.Popen[bytes]"
    http_port: int
    grpc_port: int
    log_path: Path
    workspace_parent: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def threads(self) -> int:
        """The CPU threads of each instance, as serve.py announced them."""
        found = re.search(r"\((\d+) CPU threads each\)", self.log())
        assert found, self.log()
        return int(found.group(1))

    def stop(self) -> int:
        """SIGTERM, as a service manager would; the exit code (SIGKILL after the timeout)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def wait_ready(server: Server) -> None:
    """Until the recon model is ready, failing early (with the log) if serve.py exits."""
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"serve.py exited with {server.process.returncode}:\n{server.log()}")
            try:
                if client.is_server_ready() and client.is_model_ready("recon"):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
    finally:
        client.close()
    pytest.fail(f"server not ready after {START_TIMEOUT_S} s:\n{server.log()}")


@pytest.fixture(scope="session")
def image() -> bytes:
    return Path(os.environ["IMAGE"]).read_bytes()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("triton")
    http_port, grpc_port, metrics_port = free_ports(3)
    log_path = root / "server.log"
    # serve.py's temporary workspace goes under TMPDIR: the last test checks it is removed.
    env = dict(os.environ, TMPDIR=str(root), PYTHONUNBUFFERED="1")
    command = [sys.executable, str(TRITON_DIR / "serve.py"), "--model", os.environ["MODEL_DIR"],
               "--device", "cpu", "--instances", str(INSTANCES),
               "--max-queue-size", str(MAX_QUEUE_SIZE), "--address", "127.0.0.1",
               "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--metrics-port", str(metrics_port), "--exit-timeout-secs", "20",
               "--log-level", "info"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=die_with_pytest)
    server = Server(process, http_port, grpc_port, log_path, root)
    try:
        wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            for pid in descendants(process.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
        print(f"\n--- server log ({log_path}) ---\n" + "\n".join(server.log().splitlines()[-30:]))
