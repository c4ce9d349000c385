"""Shared fixtures for the Takhin real-client suite.

The `broker` fixture starts a fresh Takhin broker (function scope) on free
127.0.0.1 ports with a fresh data directory.  The broker is started with
``--exit-on-stdin-eof`` and its stdin is a pipe held by this process, so it
dies together with the test run even if teardown never happens.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def find_broker_binary() -> str | None:
    env = os.environ.get("TAKHIN_BIN")
    if env:
        return env
    candidates = [REPO_ROOT / "target" / "debug" / "takhin"]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.insert(0, Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "takhin")
    candidates.append(Path.home() / ".cache" / "takhin-target" / "debug" / "takhin")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError as e:  # not yet listening
            last_err = e
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not connectable after {timeout}s: {last_err}")


class Broker:
    """A running Takhin broker process owned by one test."""

    def __init__(self, binary: str, data_dir: Path, log_dir: Path, extra_args: list[str]):
        self.binary = binary
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.metrics_port = free_port()
        self.registry_port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "broker.log"

    def command(self) -> list[str]:
        return [
            self.binary, "broker",
            "--data-dir", str(self.data_dir),
            "--kafka-listen", self.bootstrap,
            # The Admin API serves /metrics (as it does by default on 9644).
            "--admin-listen", f"127.0.0.1:{self.metrics_port}",
            "--schema-registry-listen", f"127.0.0.1:{self.registry_port}",
            "--exit-on-stdin-eof",
            *self.extra_args,
        ]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== start #{self.starts}: {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.PIPE, stdout=self._log_file,
            stderr=subprocess.STDOUT, cwd=str(self.log_dir),
        )
        try:
            wait_port(self.port, START_TIMEOUT_S, self.proc)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"takhin broker failed to start: {e}\n--- broker log tail ---\n{self.log_tail()}") from e

    def stop(self) -> None:
        """Graceful stop: SIGTERM, wait 10 s, then SIGKILL."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(STOP_TIMEOUT_S)
        self._close_pipes()

    def kill9(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(STOP_TIMEOUT_S)
        self._close_pipes()

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no broker log)"
        return "\n".join(lines[-n:])


@pytest.fixture(scope="session")
def broker_binary() -> str:
    b = find_broker_binary()
    if b is None:
        pytest.fail(
            "takhin broker binary not found: set TAKHIN_BIN or run `cargo build --bin takhin` "
            "(looked in target/debug, $CARGO_TARGET_DIR/debug, ~/.cache/takhin-target/debug)",
            pytrace=False,
        )
    return b


def _marker_args(request) -> list[str]:
    args: list[str] = []
    for m in request.node.iter_markers("broker_args"):
        args.extend(m.args)
    return args


@pytest.fixture
def broker(request, tmp_path, broker_binary):
    extra = ["--group-initial-rebalance-delay-ms", "0"]
    extra += os.environ.get("TAKHIN_BROKER_EXTRA_ARGS", "").split()
    extra += _marker_args(request)
    b = Broker(broker_binary, tmp_path / "data", tmp_path, extra)
    b.start()
    try:
        yield b
    finally:
        alive_at_end = b.alive()
        b.stop()
        # Shown by pytest only when the test failed.
        print(f"--- takhin broker log tail (alive at end of test: {alive_at_end}) ---")
        print(b.log_tail())


def require_tool(name: str) -> str:
    """Return the tool's path; skip (or fail under TAKHIN_REQUIRE_ALL_CLIENTS=1) if missing."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed (Debian: apt-get install {name})"
    if os.environ.get("TAKHIN_REQUIRE_ALL_CLIENTS") == "1":
        pytest.fail(msg + " and TAKHIN_REQUIRE_ALL_CLIENTS=1", pytrace=False)
    pytest.skip(msg)
