"""What the benchmark scripts share: finding the binaries, a local broker
of our own that can be restarted empty, and running perf.

Not a test: the scripts that use it print figures.
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1024 * 1024


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))


def binary(env, name):
    """$env if set, else a release build of crate `name`."""
    if os.environ.get(env):
        return os.environ[env]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", name], cwd=REPO, check=True)
    return os.path.join(target_dir(), "release", name)


def wait_port(host, port, secs=120, proc=None, what="bench"):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what}: the broker exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what}: broker did not listen on {host}:{port}")


class LocalBroker:
    """A broker of our own in a temporary directory. `fresh()` restarts it
    empty (the data directory removed, the WAL's first block wiped, which
    makes the broker format the WAL anew). The WAL file is zero-filled once
    and kept: rewriting GiBs per run would slow the disk while a VM's host
    writes them back."""

    def __init__(self, port, args=(), shards=2, wal_bytes=None, what="bench"):
        broker = binary("BROKER_BIN", "broker")
        self.port = port
        self.shards = shards
        self.args = list(args)
        self.what = what
        self.wal_bytes = wal_bytes or int(os.environ.get("BENCH_WAL_BYTES", str(16 << 30)))
        self.tmp = tempfile.mkdtemp(prefix=f"{what}-")
        # Copy: a rebuild must not replace the binary under a running broker.
        self.exe = os.path.join(self.tmp, "broker")
        shutil.copy(broker, self.exe)
        self.wal = os.path.join(self.tmp, "wal")
        self.data = os.path.join(self.tmp, "data")
        self.log_path = os.path.join(self.tmp, "broker.log")
        self.proc = None
        self.start()

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [self.exe, "--data-dir", self.data, "--wal-path", self.wal,
             "--base-port", str(self.port), "--shards", str(self.shards),
             "--wal-size-bytes", str(self.wal_bytes), *self.args],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port("127.0.0.1", self.port, proc=self.proc, what=self.what)

    def stop(self, timeout=60):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
            # The kernel tears a dead process's io_uring down asynchronously,
            # and its listening socket accepts connections until then: wait
            # until the port refuses, or start() would find the old broker.
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                except OSError:
                    break
                time.sleep(0.1)

    def fresh(self, args=None):
        """Restarts empty, optionally with other flags."""
        self.stop()
        if args is not None:
            self.args = list(args)
        shutil.rmtree(self.data, ignore_errors=True)
        if os.path.exists(self.wal):
            with open(self.wal, "r+b") as f:
                f.write(bytes(4096))
                f.flush()
                os.fsync(f.fileno())
        self.start()

    def cpu_seconds(self):
        """User + system CPU time of the broker so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def close(self):
        self.stop()
        # Keep the log for a look afterwards.
        kept = os.path.join(tempfile.gettempdir(), f"{self.what}-broker.log")
        shutil.copy(self.log_path, kept)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_perf(perf, subcommand, args, what="bench", prefix=()):
    """Runs `perf <subcommand> ... --json F` and returns the parsed report.
    `prefix`: a command to run it under (`taskset -c 1`)."""
    out = tempfile.mktemp(suffix=".json")
    cmd = [*prefix, perf, subcommand, "-q", "--json", out, *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 or not os.path.exists(out):
        raise SystemExit(f"{what}: perf failed ({' '.join(cmd)}):\n{proc.stdout}")
    with open(out) as f:
        rep = json.load(f)
    os.unlink(out)
    return rep


def create_topic(bootstrap, topic, partitions=1, assignment=None, config=None):
    """Creates a topic (existing is fine). `assignment`: leader node id per
    partition, to put partitions on chosen shards; `config`: topic configs."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if assignment is not None:
        new = NewTopic(topic, num_partitions=len(assignment), replication_factor=-1,
                       replica_assignment=[[n] for n in assignment], config=config or {})
    else:
        new = NewTopic(topic, num_partitions=partitions, replication_factor=1,
                       config=config or {})
    for f in admin.create_topics([new]).values():
        try:
            f.result(30)
        except Exception as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


def median(values):
    s = sorted(values)
    return s[len(s) // 2] if s else 0.0
