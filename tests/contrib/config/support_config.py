"""What the configuration center's tests share: a test service configured from a real etcd,
``manage.py config`` run as a user runs it, and counting what a limiter admits from outside."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc

from example.generate import hello_pb2, hello_pb2_grpc
from support.env import ROOT, base_env, service_settings
from support.polling import wait_until
from support.servers import ServerProcess

#: A limiter that refills too slowly to matter within a test: a burst admits ``burst`` calls.
SLOW = 0.001


def limiter(burst: int) -> dict[str, object]:
    return {"OPTIONS": {"rate": SLOW, "burst": burst}}


def config_settings(
    tmp_path: Path, module: str, endpoints: list[str], prefix: str, *, service: str = "cfgsvc",
    reload: list[str] | None = None, **extra: object,
) -> str:
    """A settings module of the test service named ``service``, configured from etcd."""
    config: dict[str, object] = {
        "BACKEND": "microframe.contrib.config.etcd.EtcdConfig",
        "OPTIONS": {"endpoints": endpoints, "timeout": 2, "dial_timeout": 1},
        "PREFIX": prefix,
        "CACHE_DIR": str(tmp_path / "config-cache"),
    }
    if reload is not None:
        config["RELOAD"] = reload
    extra.setdefault("LIMITER", {
        "BACKEND": "microframe.contrib.limiter.backends.TokenBucket", **limiter(3)
    })
    return service_settings(
        tmp_path, module, service,
        {"REGISTER": False},
        CONFIG=config, **extra,
    )


def env(tmp_path: Path) -> dict[str, str]:
    e = base_env()
    e["PYTHONPATH"] = f"{tmp_path}:{e['PYTHONPATH']}"
    return e


def manage_config(tmp_path: Path, settings: str, *args: str, timeout: float = 30) -> (
    subprocess.CompletedProcess[str]
):
    """``python manage.py config ARGS --settings SETTINGS``, as a user types it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "config", *args, "--settings", settings],
        cwd=ROOT, env=env(tmp_path), capture_output=True, text=True, timeout=timeout,
    )


def start(tmp_path: Path, settings: str, **kwargs: object) -> ServerProcess:
    return ServerProcess(tmp_path, settings=settings, full_env=env(tmp_path), **kwargs)  # type: ignore[arg-type]


def admitted(server: ServerProcess, calls: int) -> int:
    """Calls of ``calls`` made at once from a plain grpc client that the server admits (the
    others are answered RESOURCE_EXHAUSTED)."""
    ok = 0
    with grpc.insecure_channel(server.address) as channel:
        stub = hello_pb2_grpc.GreeterStub(channel)
        for _ in range(calls):
            try:
                stub.SayHello(hello_pb2.HelloRequest(name="x"), timeout=5)
                ok += 1
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    return ok


def metric(server: ServerProcess, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` on the server's /metrics (None: absent)."""
    for line in server.metrics_text().splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match[3])
    return None


def applied_revision(server: ServerProcess) -> float:
    return metric(server, "microframe_config_revision") or 0.0


def wait_applied(servers: list[ServerProcess], revision: int, timeout: float) -> float:
    """Seconds until every server says it applied ``revision``; fail past ``timeout``."""
    started = time.monotonic()
    wait_until(lambda: all(applied_revision(s) >= revision for s in servers), timeout,
               f"revision {revision} applied by {len(servers)} servers", interval=0.01)
    return time.monotonic() - started


def stored_revision(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr + result.stdout
    match = re.search(r"at revision (\d+)", result.stdout)
    assert match, result.stdout
    return int(match[1])


def put(cluster: object, prefix: str, scope: str, setting: str, value: object) -> int:
    """Write ``<prefix>/<scope>/<setting>`` with a plain etcd client (aetcd, in this process)
    and return the revision written: the moment etcd has it is the moment the write is done."""
    import asyncio

    import aetcd

    async def write() -> int:
        host, port = cluster.endpoints[0].rsplit(":", 1)  # type: ignore[attr-defined]
        async with aetcd.Client(host=host, port=int(port)) as client:
            reply = await client.put(f"{prefix}/{scope}/{setting}".encode(),
                                     json.dumps(value).encode())
            return int(reply.header.revision)

    return asyncio.run(write())
