"""gRPC's interop cases, run by an independent client against a service written as a user
writes one, on each transport.

The service is the ``interop`` package beside this file (``grpc.testing.TestService`` of gRPC's
interop protos, idl/, compiled by genproto into generate/, its controllers in controller/); the
client is ``interop_client.js`` on grpc-js (Node), a gRPC implementation that shares no code
with grpcio, so that the server's HTTP/2 and gRPC framing, metadata, status and cancellation
are checked by someone else's reading of the protocol. Its npm packages are those pinned by
package-lock.json, installed once with ``npm ci`` into a directory named after the lockfile's
hash (reused by later runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.env import ROOT, TESTS, base_env, require_binary
from support.npm import node_modules as npm_node_modules
from support.servers import ServerProcess

HERE = TESTS / "interop"

#: The cases of gRPC's doc/interop-test-descriptions.md the client runs, in its order.
CASES = (
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "custom_metadata",
    "status_code_and_message",
    "special_status_message",
    "unimplemented_method",
    "unimplemented_service",
)

#: Cases that fail on one transport through that transport's own limitation (documented in
#: docs/topics/transport.md): transport -> case -> why. Strict expected failures there only.
KNOWN_FAILURES: dict[str, dict[str, str]] = {}

CLIENT_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` that runs the client (missing: a failure under CI, else a skip)."""
    return require_binary("node")


@pytest.fixture(scope="session")
def node_modules(node: str) -> Path:
    """The client's ``node_modules`` (:func:`support.npm.node_modules`)."""
    return npm_node_modules(HERE, "interop", "@grpc/grpc-js/package.json")


@pytest.fixture(scope="module")
def interop_server(
    tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[ServerProcess]:
    """The interop service, served by ``manage.py runserver`` on ``transport``."""
    server = ServerProcess(
        tmp_path_factory.mktemp("interop"), settings="interop.settings", transport=transport
    ).wait_serving()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def interop_run(
    node: str, node_modules: Path, interop_server: ServerProcess
) -> subprocess.CompletedProcess[str]:
    """One run of the client, every case, against the server."""
    return subprocess.run(
        [node, str(HERE / "interop_client.js"), "--server_host=127.0.0.1",
         f"--server_port={interop_server.port}", f"--proto_root={HERE / 'idl'}",
         "--test_case=all"],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
    )


def test_generated_code_is_current() -> None:
    """generate/ is what genproto makes of idl/ today, as a service's CI checks it."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "genproto", "--check", "--idl", "idl",
         "--out", "generate"],
        cwd=HERE, env=base_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _results(run: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """Case -> (PASS or FAIL, the reason) of the client's lines."""
    results = {}
    for line in run.stdout.splitlines():
        name, _, rest = line.partition(" ")
        verdict, _, reason = rest.partition(" ")
        results[name] = (verdict, reason)
    return results


def test_client_reports_every_case(interop_run: subprocess.CompletedProcess[str]) -> None:
    """One line a case, and an exit status that says whether any failed."""
    results = _results(interop_run)
    assert tuple(results) == CASES, interop_run.stdout + interop_run.stderr
    failed = [name for name, (verdict, _) in results.items() if verdict != "PASS"]
    assert (interop_run.returncode != 0) == bool(failed), (
        f"exit status {interop_run.returncode} with failed cases {failed}:\n{interop_run.stderr}"
    )


@pytest.mark.parametrize("case", CASES)
def test_interop_case(
    request: pytest.FixtureRequest, transport: str, case: str,
    interop_run: subprocess.CompletedProcess[str], interop_server: ServerProcess,
) -> None:
    why = KNOWN_FAILURES.get(transport, {}).get(case)
    if why is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=why))
    verdict, reason = _results(interop_run).get(case, ("MISSING", interop_run.stderr))
    assert verdict == "PASS", (
        f"{case} on {transport}: {verdict} {reason}\nserver output:\n{interop_server.output}"
    )
