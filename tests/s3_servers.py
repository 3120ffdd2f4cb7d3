"""Real S3-compatible endpoints on 127.0.0.1 for the storage tests.

* moto's standalone server: honours conditional writes like AWS S3;
* OpenStack Swift with s3api (``scripts/swift-s3.sh``): answers 501 to conditional writes.

Both are real HTTP servers reached through boto3; the fixtures start and stop them.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from histo_core.storage.s3 import S3Store

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Endpoint:
    kind: str
    url: str
    access_key: str
    secret_key: str
    stop: callable
    start: callable

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": "us-east-1"}

    def new_store(self, monkeypatch) -> S3Store:
        """An ``S3Store`` under a prefix of a new bucket on this server, its credentials in
        the environment (the boto3 chain, as users give them), with a short lease settle
        time so that lease tests take seconds."""
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)
        bucket = f"histo-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        store = S3Store(f"s3://{bucket}/some/prefix", endpoint_url=self.url, region="us-east-1")
        store.lease_settle_s = 0.3
        return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's range for the local
    ports of outgoing connections: in that range a port that nothing listens on can still be
    the local end of a client's connection (boto3's to moto, say), and a server's bind to it
    then fails after its 30 s of retries."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.is_file() else 32768
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(10_000, max(10_001, low - count))
        if all(_bindable(first + k) for k in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found between 10000 and {low}")


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def start_moto(tmp: Path) -> Endpoint:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    log = open(tmp / "moto.log", "w")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    _wait_for_port(port)

    def stop():
        proc.terminate()
        proc.wait(10)

    return Endpoint("moto", f"http://127.0.0.1:{port}", "AKIAHISTOTESTKEY0001", "histo-secret-do-not-leak-0001",
                    stop, lambda: None)


def swift_available() -> bool:
    return shutil.which("swift-proxy-server") is not None


def start_swift(tmp: Path, attempts: int = 3) -> Endpoint:
    """Swift's proxy on a free port, its account/container/object servers on port+2..4, all
    below the outgoing connections' range (see ``free_port_block``). Another process can
    still take one of those ports between the check and the bind (the suite runs several at
    once), so a start that fails is tried again on other ports, in a new folder (the rings
    record their ports)."""
    script = REPO / "scripts" / "swift-s3.sh"
    for attempt in range(attempts):
        folder, port = tmp / ("swift" if attempt == 0 else f"swift-{attempt}"), free_port_block(5)

        def start(folder: Path = folder, port: int = port) -> None:
            subprocess.run(["bash", str(script), "start", str(folder), str(port)], check=True, capture_output=True)

        def stop(folder: Path = folder) -> None:
            subprocess.run(["bash", str(script), "stop", str(folder)], check=True)
            time.sleep(0.5)

        try:
            start()
        except subprocess.CalledProcessError as exc:
            if attempt == attempts - 1:
                raise RuntimeError(f"Swift did not start on {attempts} sets of ports; the last: "
                                   f"{exc.stderr.decode(errors='replace')[-2000:]}") from exc
            continue
        return Endpoint("swift", f"http://127.0.0.1:{port}", "test:tester", "testing", stop, start)
    raise AssertionError("unreachable")


def endpoint_or_skip(kind: str, tmp: Path) -> Endpoint:
    if kind == "swift" and not swift_available():
        reason = "OpenStack Swift is not installed (scripts/swift-s3.sh install, as root)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run the Swift tests")
        pytest.skip(reason)
    return start_moto(tmp) if kind == "moto" else start_swift(tmp)
