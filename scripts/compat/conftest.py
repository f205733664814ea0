"""Fixtures that run the real broker binary for the compat tests.

* `broker`: one broker per test module. A module sets `BROKER_PARAMS = {...}`
  (keys: shards, broker_id, args) to change how it is started; default is
  2 shards, broker id 0.
* `fresh_broker`: one broker per test, for tests that try to break it, so a
  crash is blamed on the test that caused it.
* `figures`: records throughput figures; they are printed at the end of the
  run and written to $COMPAT_OUT_DIR/throughput.txt (default
  target/compat/throughput.txt).

The binary comes from $BROKER_BIN (default target/release/broker under the
repo root). scripts/test copies the built binary to a private path first so
a concurrent rebuild cannot swap it during a run.

After every test body the broker must still be running and its log must
not contain a panic; otherwise the test fails. A failing test gets
the tail of the broker's log attached to its report.
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 60

_FIGURES: list[str] = []
_BROKER_WARNINGS: dict[str, dict[str, int]] = {}  # broker workdir name -> message -> count
_LOG_LEVEL = re.compile(r"\b(WARN|ERROR)\b\s+(.*)")
_PEER = re.compile(r"\s*peer=\S+")


def broker_bin() -> Path:
    p = Path(os.environ.get("BROKER_BIN", REPO_ROOT / "target" / "release" / "broker"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def _ports_free(base: int, n: int) -> bool:
    for port in range(base, base + n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def _pick_base_port(n: int, rng: random.Random) -> int:
    # Below Linux's ephemeral range (32768+): a client connection's local
    # port there, even in TIME_WAIT, makes the broker's bind fail.
    for _ in range(200):
        base = rng.randint(20000, 32000 - n)
        if _ports_free(base, n):
            return base
    raise RuntimeError("no free port range found in 20000-32000")


def _die_with_parent() -> None:
    # If pytest itself is killed (e.g. CI timeout), take the broker with it.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Broker:
    """A running broker process and how to reach it."""

    def __init__(self, workdir: Path, shards: int = 2, broker_id: int = 0,
                 args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.shards = shards
        self.broker_id = broker_id
        self.extra_args = list(args or [])
        self.data_dir = workdir / "data"
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.base_port = 0
        self.host = HOST
        self._panics_seen = 0

    # -- addresses --
    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.shards)]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.ports)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def node_id(self, shard: int) -> int:
        return self.broker_id * 1000 + shard

    def port_of_node(self, node_id: int) -> int:
        shard = node_id - self.broker_id * 1000
        assert 0 <= shard < self.shards, f"node id {node_id} is not one of this broker's shards"
        return self.base_port + shard

    @property
    def expected_nodes(self) -> dict[int, tuple[str, int]]:
        return {self.node_id(i): (self.host, self.base_port + i) for i in range(self.shards)}

    # -- lifecycle --
    @property
    def admin_port(self) -> int:
        """The admin API's port: the one after the shards' ports."""
        return self.base_port + self.shards

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def command(self) -> list[str]:
        admin = [] if "--admin-listen" in self.extra_args else [
            "--admin-listen", f"{self.host}:{self.admin_port}"]
        return [str(broker_bin()), "--data-dir", str(self.data_dir), "--shards", str(self.shards),
                "--base-port", str(self.base_port), "--listen-host", self.host,
                "--broker-id", str(self.broker_id), *admin, *self.extra_args]

    def start(self, rng: random.Random) -> None:
        exe = broker_bin()
        if not os.access(exe, os.X_OK):
            pytest.fail(f"broker binary {exe} not found or not executable "
                        "(build it with `cargo build --release --bin broker` or set BROKER_BIN)",
                        pytrace=False)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for attempt in range(3):
            # One port per shard, then the admin API's.
            self.base_port = _pick_base_port(self.shards + 1, rng)
            ok, last_error = self._launch(f"start attempt {attempt}")
            if ok:
                return
            self.stop()
            if "in use" not in self.log_tail(20).lower():
                break  # not a port race: retrying will not help
        pytest.fail(f"broker did not start: {last_error}\n--- broker log tail ---\n{self.log_tail()}",
                    pytrace=False)

    def _launch(self, what: str) -> tuple[bool, str]:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain logs in test reports
        # A small WAL keeps the dozens of test brokers cheap on disk.
        env.setdefault("BROKER_WAL_SIZE_BYTES", str(256 << 20))
        with open(self.log_path, "ab") as log:
            log.write(f"### {what}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_die_with_parent)
        return self._wait_ready()

    def kill9(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def _wait_ports_closed(self) -> None:
        """A killed broker's listening sockets can outlive the process for a
        moment (io_uring tears its ring down in a kernel worker): until they
        go, connects succeed and the readiness check would pass before the
        new process listens."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            open_ports = []
            for port in self.ports:
                try:
                    socket.create_connection((self.host, port), timeout=0.2).close()
                    open_ports.append(port)
                except OSError:
                    pass
            if not open_ports:
                return
            time.sleep(0.05)
        pytest.fail(f"ports {open_ports} still accept connections after the broker exited",
                    pytrace=False)

    def restart(self) -> None:
        """Starts the stopped broker again on the same data dir and ports
        (clients and node addresses stay the same)."""
        assert not self.alive(), "stop or kill the broker first"
        self._wait_ports_closed()
        last_error = ""
        for attempt in range(5):
            ok, last_error = self._launch(f"restart attempt {attempt}")
            if ok:
                return
            self.stop()
            time.sleep(0.5)  # the old listener's port may not be free yet
        pytest.fail(f"broker did not restart: {last_error}\n--- broker log tail ---\n{self.log_tail()}",
                    pytrace=False)

    def _wait_ready(self) -> tuple[bool, str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = set(self.ports)
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return False, f"process exited with code {code} during startup"
            for port in sorted(pending):
                try:
                    socket.create_connection((self.host, port), timeout=0.5).close()
                    pending.discard(port)
                except OSError:
                    pass
            if not pending:
                return True, ""
            time.sleep(0.1)
        return False, f"ports {sorted(pending)} not accepting TCP after {START_TIMEOUT_S:.0f}s"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode

    # -- inspection --
    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc status")

    def peak_rss_kib(self) -> int:
        """Largest resident set since the process started (VmHWM)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmHWM in /proc status")

    def tool(self, *args: str) -> str:
        """Runs `broker <args>` against this broker's data dir; returns stdout."""
        out = subprocess.run([str(broker_bin()), "--data-dir", str(self.data_dir), *self.extra_args,
                              *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"broker {' '.join(args)} failed: {out.stderr}"
        return out.stdout

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def new_panics(self) -> list[str]:
        """Panic lines logged since the last call."""
        lines = [ln for ln in self.log_text().splitlines() if "panicked at" in ln]
        new = lines[self._panics_seen:]
        self._panics_seen = len(lines)
        return new

    def warnings(self) -> dict[str, int]:
        """Distinct WARN/ERROR log messages (timestamps stripped) and their counts."""
        out: dict[str, int] = {}
        for line in self.log_text().splitlines():
            m = _LOG_LEVEL.search(line)
            if m:
                msg = _PEER.sub("", f"{m.group(1)} {m.group(2)}")[:300]
                out[msg] = out.get(msg, 0) + 1
        return out

    def __repr__(self) -> str:
        return f"Broker(pid={self.proc.pid if self.proc else None}, bootstrap={self.bootstrap}, log={self.log_path})"


def _params_for(request) -> dict:
    """`args_fixture` names a fixture whose value (a list of flags) is added
    to `args`, for flags known only at run time (ports of test servers)."""
    params = {"shards": 2, "broker_id": 0, "args": []}
    params.update(getattr(request.module, "BROKER_PARAMS", {}))
    params.update(getattr(request, "param", None) or {})
    fixture = params.pop("args_fixture", None)
    if fixture:
        params["args"] = list(params["args"]) + list(request.getfixturevalue(fixture))
    return params


def _run_broker(request, tmp_path_factory, scope_name: str):
    params = _params_for(request)
    workdir = tmp_path_factory.mktemp(scope_name)
    b = Broker(workdir, params["shards"], params["broker_id"], params["args"])
    rng = random.Random()  # ports must differ between concurrent runs
    b.start(rng)
    try:
        yield b
    finally:
        b.stop()
        warnings = b.warnings()
        if warnings:
            _BROKER_WARNINGS[workdir.name] = warnings
        # Keep the log for post-mortems; the data dir may hold a preallocated
        # WAL, and a run starts a few dozen brokers.
        shutil.rmtree(b.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def broker(request, tmp_path_factory):
    yield from _run_broker(request, tmp_path_factory, f"broker-{request.module.__name__}")


@pytest.fixture
def fresh_broker(request, tmp_path_factory):
    yield from _run_broker(request, tmp_path_factory, f"broker-{request.node.name[:40]}")


def _brokers_of(item) -> list[Broker]:
    funcargs = getattr(item, "funcargs", {}) or {}
    return [v for v in funcargs.values() if isinstance(v, Broker)]


def _health_problem(b: Broker) -> str | None:
    if not b.alive():
        code = b.proc.returncode if b.proc else None
        return f"broker exited (code {code}) during this test\n--- broker log tail ---\n{b.log_tail()}"
    panics = b.new_panics()
    if panics:
        return "broker logged a panic during this test:\n" + "\n".join(panics[:5])
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After the test body (before fixtures stop the broker): the broker it
    used is still running and has not panicked."""
    result = yield
    for b in _brokers_of(item):
        problem = _health_problem(b)
        if problem:
            pytest.fail(problem, pytrace=False)
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when != "teardown":
        for b in _brokers_of(item):
            state = "running" if b.alive() else f"EXITED with code {b.proc.returncode if b.proc else None}"
            rep.sections.append((f"broker {state}; log tail ({b.log_path})", b.log_tail()))


class Figures:
    def record(self, line: str) -> None:
        _FIGURES.append(line)
        out_dir = Path(os.environ.get("COMPAT_OUT_DIR", REPO_ROOT / "target" / "compat"))
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "throughput.txt", "a") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line + "\n")


@pytest.fixture(scope="session")
def figures() -> Figures:
    return Figures()


def pytest_terminal_summary(terminalreporter):
    if _BROKER_WARNINGS:
        terminalreporter.section("broker WARN/ERROR log lines (distinct, per broker run)")
        for name, msgs in _BROKER_WARNINGS.items():
            terminalreporter.write_line(f"{name}:")
            for msg, n in sorted(msgs.items(), key=lambda kv: -kv[1])[:5]:
                terminalreporter.write_line(f"  {n:5d} x {msg}")
    if _FIGURES:
        terminalreporter.section("throughput (measured by the tests)")
        for line in _FIGURES:
            terminalreporter.write_line(line)
