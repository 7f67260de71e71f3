"""Real etcd servers for tests: one member or a cluster, on free loopback ports.

Each member is a real ``etcd`` process (Debian's ``etcd-server``) with its own temporary data
directory and log file. Members can be stopped (SIGTERM), killed (SIGKILL), restarted on the
same data directory, or started afresh on an empty one. Waits are bounded polls of the
members' ``/health`` endpoint, never bare sleeps. Every process started here is killed when its
cluster is closed, and at interpreter exit as a last resort.

    with EtcdCluster(size=3) as cluster:
        cluster.endpoints                  # ["127.0.0.1:41235", ...]
        cluster.members[0].kill()
        cluster.etcdctl("get", "--prefix", "/microframe/services/")

Timing is tuned for tests (short heartbeat and election timeout, cheap bcrypt); etcd 3.4 has no
``--unsafe-no-fsync``, so data directories go to ``/dev/shm`` when it exists, where fsync costs
nothing.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microframe.test.ports import free_port

from support.env import require_binary

# Fast enough for tests, slow enough that a CPU-starved member on a busy 2-core machine does
# not keep calling elections (50/500 ms made a 3-member cluster flap under load).
HEARTBEAT_MS = 100
ELECTION_MS = 1000

_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - only when a test run is interrupted
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test PKI: a CA, a server certificate for 127.0.0.1/localhost, a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of the above


def generate_tls(directory: Path) -> TlsFiles:
    """Write a CA, a server certificate (IP 127.0.0.1, DNS localhost) and a client one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def issue(
        ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, usage: Any
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = make_ca("microframe test CA")
    server_key, server_cert = issue(ca_key, ca_cert, "etcd", ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = issue(ca_key, ca_cert, "client", ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other_cert = make_ca("some other CA")
    return TlsFiles(
        ca=write_cert(ca_cert, directory / "ca.pem"),
        server_cert=write_cert(server_cert, directory / "server.pem"),
        server_key=write_key(server_key, directory / "server-key.pem"),
        client_cert=write_cert(client_cert, directory / "client.pem"),
        client_key=write_key(client_key, directory / "client-key.pem"),
        other_ca=write_cert(other_cert, directory / "other-ca.pem"),
    )


@dataclass(frozen=True)
class KeyValue:
    """A key as ``etcdctl get -w json`` shows it."""

    value: str
    lease: int  # 0: no lease
    mod_revision: int


class EtcdMember:
    """One etcd process of an :class:`EtcdCluster`."""

    def __init__(self, cluster: EtcdCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = cluster.root / f"{name}.data"
        self.log_path = cluster.root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:port``, what a registry's ``endpoints`` option lists."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.cluster.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, state: str = "new") -> EtcdMember:
        """Start the process (on the existing data directory, if any); do not wait for health."""
        assert not self.running, f"{self.name} is already running"
        args = [
            self.cluster.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.cluster.initial_cluster(),
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.cluster.token,
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--bcrypt-cost", "4",
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "info",
        ]
        tls = self.cluster.tls
        if tls is not None:
            args += [
                "--cert-file", str(tls.server_cert),
                "--key-file", str(tls.server_key),
                "--trusted-ca-file", str(tls.ca),
                "--client-cert-auth",
            ]
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start #{self.starts}: {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _live.add(self.proc)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM); SIGKILL when it does not exit within ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        _live.discard(self.proc)

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash or a power cut would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _live.discard(self.proc)

    def restart(self, timeout: float = 20.0) -> EtcdMember:
        """Start again on the same data directory and ports, and wait until healthy."""
        self.stop()
        self.start()
        self.wait_healthy(timeout)
        return self

    def start_fresh(self, timeout: float = 20.0) -> EtcdMember:
        """Start on an empty data directory (all data lost), as a new one-member cluster."""
        assert len(self.cluster.members) == 1, "only a one-member cluster can be started afresh"
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.cluster.token = f"test-{uuid.uuid4().hex[:8]}"
        self.start()
        self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        """Return whether the member answers ``/health`` with ``{"health": "true"}``."""
        if not self.running:
            return False
        try:
            with urllib.request.urlopen(
                f"{self.client_url}/health", timeout=1, context=self.cluster.ssl_context()
            ) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.05)
        raise AssertionError(f"etcd {self.name} not healthy after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class EtcdCluster:
    """``size`` etcd members on loopback, in a temporary directory removed by :meth:`close`.

    ``tls``: serve clients over TLS with those files, requiring client certificates.
    """

    def __init__(self, size: int = 1, *, tls: TlsFiles | None = None, root: Path | None = None) -> None:
        self.binary = require_binary("etcd")
        self.tls = tls
        shm = Path("/dev/shm")
        base = shm if root is None and shm.is_dir() and os.access(shm, os.W_OK) else root
        self.root = Path(tempfile.mkdtemp(prefix="etcd-test-", dir=base))
        self.token = f"test-{uuid.uuid4().hex[:8]}"
        self.members = [EtcdMember(self, f"m{i}") for i in range(size)]
        self.user: tuple[str, str] | None = None  # etcdctl's credentials once auth is on

    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def member(self, endpoint: str) -> EtcdMember:
        return next(m for m in self.members if m.endpoint == endpoint or m.client_url == endpoint)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until all are healthy (new ports if one was taken)."""
        for attempt in range(3):
            for member in self.members:
                member.start()
            try:
                self.wait_healthy(timeout)
                return self
            except RuntimeError:
                logs = "".join(m.log_tail() for m in self.members)
                if "address already in use" not in logs or attempt == 2:
                    raise
                for member in self.members:
                    member.kill()
                    shutil.rmtree(member.data_dir, ignore_errors=True)
                    member.client_port, member.peer_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until every running member is healthy."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            if member.proc is not None:
                member.wait_healthy(max(0.1, deadline - time.monotonic()))

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def etcdctl_command(self, timeout: float = 10.0) -> list[str]:
        """The ``etcdctl`` command line (endpoints, credentials, TLS) for the running members."""
        binary = require_binary("etcdctl")
        running = [m.client_url for m in self.members if m.running] or [self.members[0].client_url]
        command = [binary, "--endpoints", ",".join(running), "--dial-timeout", "2s",
                   "--command-timeout", f"{int(timeout)}s"]
        if self.user is not None:
            command += ["--user", f"{self.user[0]}:{self.user[1]}"]
        if self.tls is not None:
            command += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert),
                        "--key", str(self.tls.client_key)]
        return command

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 10.0) -> str:
        """Run ``etcdctl`` (API v3) against the running members and return its output."""
        result = subprocess.run(
            self.etcdctl_command(timeout) + list(args), capture_output=True, text=True,
            env=dict(os.environ, ETCDCTL_API="3"), timeout=timeout + 5,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout + (result.stderr if result.returncode else "")

    def get_prefix(self, prefix: str) -> dict[str, KeyValue]:
        """Return the keys under ``prefix``, read with ``etcdctl get --prefix -w json``."""
        data = json.loads(self.etcdctl("get", "--prefix", prefix, "-w", "json"))
        return {
            base64.b64decode(kv["key"]).decode(): KeyValue(
                value=base64.b64decode(kv.get("value", "")).decode(),
                lease=int(kv.get("lease", 0)),
                mod_revision=int(kv.get("mod_revision", 0)),
            )
            for kv in data.get("kvs", [])
        }

    def lease_ttl(self, lease: int) -> tuple[int, int]:
        """Return ``(granted TTL, remaining TTL)`` of ``lease`` (``etcdctl lease timetolive``)."""
        data = json.loads(self.etcdctl("lease", "timetolive", format(lease, "x"), "-w", "json"))
        return int(data["granted-ttl"]), int(data["ttl"])

    def enable_auth(self, password: str) -> None:
        """Add user ``root`` with ``password`` and turn authentication on."""
        self.etcdctl("user", "add", f"root:{password}")
        self.etcdctl("user", "grant-role", "root", "root", check=False)  # etcd 3.4 needs it
        self.etcdctl("auth", "enable")
        self.user = ("root", password)

    def watch_prefix(self, prefix: str, timeout: float = 10.0) -> PrefixWatch:
        """Watch the keys under ``prefix`` from now on (see :class:`PrefixWatch`)."""
        return PrefixWatch(self, prefix, timeout)

    def close(self) -> None:
        """Kill every member and remove the data directories."""
        for member in self.members:
            member.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrefixWatch:
    """``etcdctl watch --prefix`` in the background: the events under a prefix, each with the
    time it arrived. Measures when a key changed without the cost of polling with a new etcdctl
    process (tens to hundreds of milliseconds each on a loaded machine).

    Ready when built: a marker key under the prefix is written and its event seen, so every
    change after the constructor returns is reported.
    """

    def __init__(self, cluster: EtcdCluster, prefix: str, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [*cluster.etcdctl_command(), "watch", "--prefix", prefix, "-w", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ, ETCDCTL_API="3"),
        )
        self._buffer = b""
        marker = f"{prefix}.watch-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + timeout
        while True:  # the watch may not be open yet: write the marker until it is seen
            cluster.etcdctl("put", marker, "1")
            try:
                self.wait_for(lambda key, deleted: key == marker, min(1.0, deadline - time.monotonic()))
                break
            except AssertionError:
                if time.monotonic() >= deadline:
                    self.close()
                    raise
        cluster.etcdctl("del", marker)

    def wait_for(self, wanted: Any, timeout: float) -> float:
        """Return the arrival time (``time.monotonic()``) of the first event for which
        ``wanted(key, deleted)`` is true; AssertionError after ``timeout`` seconds."""
        import select

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                arrived = time.monotonic()
                for event in json.loads(line or b"{}").get("Events") or []:
                    key = base64.b64decode(event["kv"]["key"]).decode()
                    if wanted(key, event.get("type") == 1):
                        return arrived
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise AssertionError(f"no such event within {timeout} s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError("etcdctl watch ended")
            self._buffer += chunk

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> PrefixWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
