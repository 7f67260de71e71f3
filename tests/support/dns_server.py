"""A real DNS server for tests: Debian's ``dnsmasq`` on a free loopback port, serving A/AAAA
records from a hosts file and SRV records from its configuration, both rewritten while clients
run (the hosts file is read again on SIGHUP; SRV records need a restart, on the same port)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from microframe.test.ports import free_port

from support.env import require_binary


class DnsServer:
    """``dnsmasq`` answering for the names of ``domain`` the test gives it, with ``ttl``-second
    records."""

    def __init__(self, directory: Path, ttl: int = 1, domain: str = "test", *,
                 local: bool = True) -> None:
        self.directory = directory
        self.domain = domain
        self.local = local
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()  # dnsmasq binds it for UDP and TCP
        self.ttl = ttl
        self.hosts = directory / "hosts"
        self.hosts.write_text("")
        self.srv: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "dnsmasq.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_hosts(self, records: dict[str, list[str]]) -> None:
        """Serve ``{name: [address, ...]}`` (A and AAAA), from the next query on."""
        lines = [f"{address} {name}" for name, addresses in records.items() for address in addresses]
        self.hosts.write_text("\n".join(lines) + "\n")
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def set_srv(self, records: list[tuple[str, str, int, int, int]]) -> None:
        """Serve SRV records ``(name, target, port, priority, weight)``: a restart."""
        self.srv = [f"--srv-host={n},{t},{p},{prio},{w}" for n, t, p, prio, w in records]
        if self.proc is not None:
            self.stop()
            self.start()

    def start(self) -> DnsServer:
        binary = require_binary("dnsmasq")
        self.proc = subprocess.Popen(
            [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
             f"--addn-hosts={self.hosts}", "--listen-address=127.0.0.1", "--bind-interfaces",
             f"--port={self.port}", f"--local-ttl={self.ttl}", "--user=root", "--group=root",
             "--pid-file=", "--log-facility=-",
             # Answered from these records alone (no record of a type: NODATA, not REFUSED);
             # without it, a query with no record here has nowhere to go and is REFUSED.
             *([f"--local=/{self.domain}/"] if self.local else []), *self.srv],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dnsmasq did not start:\n{self.log.read_text()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(port: int) -> bool:
    """Whether something answers a DNS query on ``127.0.0.1:port`` (UDP)."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x07probe00\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(query, ("127.0.0.1", port))
            sock.recvfrom(512)
            return True
        except OSError:
            return False

