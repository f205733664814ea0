"""Real S3 test servers for the compat tests and `scripts/objects-check`:
moto (an S3-compatible server, objects in memory) and the fault proxy in
front of it (scripts/objstore/fault_proxy.py), both on 127.0.0.1 on free
ports, stopped when the returned handles are closed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
OBJSTORE = REPO_ROOT / "scripts" / "objstore"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


class Server:
    def __init__(self, proc: subprocess.Popen, fields: dict[str, str]):
        self.proc = proc
        self.fields = fields

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _start(cmd: list[str], marker: str, timeout: float = 120) -> Server:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[1]} exited with {proc.returncode} before it was ready")
            continue
        if line.startswith(marker):
            fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            return Server(proc, fields)
    proc.kill()
    raise RuntimeError(f"{cmd[1]} did not start within {timeout} s")


def start_moto() -> Server:
    """moto on a free port; `fields["url"]` is its endpoint."""
    return _start([sys.executable, str(OBJSTORE / "s3-server"), "--port", "0"], "S3_SERVER")


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3  # installed with moto
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.create_bucket(Bucket=bucket)


def list_keys(endpoint: str, bucket: str) -> list[tuple[str, int]]:
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
    return out


class FaultProxy(Server):
    @property
    def url(self) -> str:
        return self.fields["data"]

    def set_faults(self, **faults) -> None:
        req = urllib.request.Request(self.fields["control"] + "/__faults",
                                     data=json.dumps(faults).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.fields["control"] + "/__stats", timeout=10) as r:
            return json.loads(r.read())


def start_proxy(upstream: str, **faults: float) -> FaultProxy:
    cmd = [sys.executable, str(OBJSTORE / "fault_proxy.py"), "--upstream", upstream]
    for name, value in faults.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    s = _start(cmd, "FAULT_PROXY")
    return FaultProxy(s.proc, s.fields)
