"""Bearer tokens and mTLS identities: a real server refuses, admits and tells who called."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from microframe.contrib.auth.middleware import Credentials

from example.generate.hello_pb2 import HelloReply, HelloRequest
from support.env import ROOT, base_env, require_binary, service_settings
from support.polling import wait_until
from support.servers import ServerProcess

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cr3t-billing-t0ken"
REPORTS_TOKEN = "reports-token-0123"
SAY_HELLO = "/helloworld.Greeter/SayHello"


class Secured:
    """The test service behind TLS with client certificates (mTLS), auth on."""

    def __init__(self, tmp: Path) -> None:
        if not os.environ.get("CI"):
            pytest.importorskip("cryptography")
        from support.etcd_cluster import generate_tls

        self.pki = generate_tls(tmp / "pki")
        registry = {"BACKEND": "microframe.contrib.registry.file.FileRegistry",
                    "OPTIONS": {"directory": str(tmp / "registry")}, "REGISTER": False}
        tls = {"CERT": str(self.pki.server_cert), "KEY": str(self.pki.server_key), "CLIENT_CA": str(self.pki.ca)}
        settings = service_settings(
            tmp, "securesvc", "secure", registry, grpc={"TLS": tls},
            AUTH={
                "ENABLED": True,
                "TOKENS": {"billing": TOKEN},
                "TOKEN_HASHES": {"reports": hashlib.sha256(REPORTS_TOKEN.encode()).hexdigest()},
                "MTLS_IDENTITIES": {"client": "svc-client"},
                "PERMISSIONS": {"/helloworld.Greeter/LotsOfGreetings": ["billing"]},
                "EXEMPT": ["/helloworld.Greeter/BidiHello"],
            },
            ACCESS_LOG={"ENABLED": True, "METADATA": True},
        )
        env = {"PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT), str(ROOT / "tests")])}
        self.settings, self.env = settings, env
        self.server = ServerProcess(tmp, settings=settings, env=env)
        wait_until(lambda: "Serving gRPC on" in self.server.output, 20, "the TLS server to serve")

    def channel(self, client_cert: bool) -> grpc.Channel:
        root = self.pki.ca.read_bytes()
        if client_cert:
            credentials = grpc.ssl_channel_credentials(root, self.pki.client_key.read_bytes(), self.pki.client_cert.read_bytes())
        else:
            credentials = grpc.ssl_channel_credentials(root)
        return grpc.secure_channel(self.server.address, credentials)

    def say(self, name: str, *, token: str | None = None, client_cert: bool = False, method: str = SAY_HELLO) -> str:
        """Call ``method`` with one request named ``name``, over TLS, with a grpc channel."""
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        with self.channel(client_cert) as channel:
            kinds = {"SayHello": channel.unary_unary, "LotsOfGreetings": channel.stream_unary,
                     "BidiHello": channel.stream_stream}
            call = kinds[method.rsplit("/", 1)[1]](method, request_serializer=HelloRequest.SerializeToString,
                                                    response_deserializer=HelloReply.FromString)
            request = HelloRequest(name=name) if method == SAY_HELLO else iter([HelloRequest(name=name)])
            result = call(request, metadata=metadata, timeout=5)
            return result.message if isinstance(result, HelloReply) else ",".join(r.message for r in result)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    service = Secured(tmp_path_factory.mktemp("auth"))
    yield service
    service.server.kill()


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code()


def test_a_call_without_credentials_is_unauthenticated(secured: Secured) -> None:
    # TLS without a client certificate is refused by the handshake itself (mTLS).
    assert code_of(lambda: secured.say("x")) == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: secured.say("x", token="wrong", client_cert=True)) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: secured.say("x", token=TOKEN[:-1], client_cert=True)) == grpc.StatusCode.UNAUTHENTICATED


def test_tokens_and_certificates_name_the_caller(secured: Secured) -> None:
    assert secured.say("identity", token=TOKEN, client_cert=True) == "billing"
    assert secured.say("identity", token=REPORTS_TOKEN, client_cert=True) == "reports"  # from its hash
    assert secured.say("identity", client_cert=True) == "svc-client"  # the certificate's CN


def test_permissions_and_exemptions(secured: Secured) -> None:
    method = "/helloworld.Greeter/LotsOfGreetings"
    assert secured.say("a", token=TOKEN, client_cert=True, method=method) == "a"
    assert code_of(lambda: secured.say("a", token=REPORTS_TOKEN, client_cert=True, method=method)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: secured.say("a", client_cert=True, method=method)) == grpc.StatusCode.PERMISSION_DENIED
    assert secured.say("free", client_cert=True, method="/helloworld.Greeter/BidiHello", token="not checked") == "FREE"


def test_no_token_reaches_the_logs(secured: Secured) -> None:
    refusals = secured.server.output.count("unknown bearer token")
    secured.say("logged", token=TOKEN, client_cert=True)
    with pytest.raises(grpc.RpcError):
        secured.say("logged", token="wrong-but-secret-looking", client_cert=True)
    wait_until(lambda: secured.server.output.count("unknown bearer token") > refusals, 10, "the refusal's log line")
    output = secured.server.output
    assert 'md.authorization="[REDACTED]"' in output  # the access log shows metadata, not this
    assert TOKEN not in output and "wrong-but-secret-looking" not in output
    assert "unknown bearer token" in output


def test_credentials_match_whole_tokens_only() -> None:
    credentials = Credentials({"TOKENS": {"a": "alpha", "b": "beta"},
                               "TOKEN_HASHES": {"c": hashlib.sha256(b"gamma").hexdigest()}})
    assert [credentials.token_identity(t) for t in ("alpha", "beta", "gamma")] == ["a", "b", "c"]
    assert [credentials.token_identity(t) for t in ("alph", "alphaa", "", "ALPHA")] == [None] * 4


def test_call_speaks_tls_and_sends_the_token(secured: Secured) -> None:
    pki = secured.pki
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "microframe", "call", "helloworld.Greeter/SayHello", '{"name": "identity"}',
             "--address", secured.server.address, "--compact", *args],
            env=base_env(**secured.env), capture_output=True, text=True, timeout=60,
        )

    with_token = call(*tls, "-H", f"authorization=Bearer {TOKEN}", "--reflection")
    assert with_token.returncode == 0, with_token.stderr
    assert with_token.stdout.strip() == '{"message": "billing"}'
    by_certificate = call(*tls, "--reflection")
    assert by_certificate.stdout.strip() == '{"message": "svc-client"}', by_certificate.stderr
    plaintext = call("--settings", secured.settings, "--timeout", "2")
    assert plaintext.returncode == 64 + 14 and "UNAVAILABLE" in plaintext.stderr
    half = call("--tls-cert", str(pki.client_cert))
    assert half.returncode == 1 and "--tls-cert and --tls-key go together" in half.stderr


async def test_each_auth_setting_is_used_at_once_and_plaintext_calls_need_credentials() -> None:
    from microframe.core.router import load_routes
    from microframe.test import override_settings, serve

    routes = load_routes("testservice.router")
    middleware = ["microframe.contrib.auth.middleware.AuthMiddleware"]
    for token in ("one", "two", "three"):  # a new AUTH dict each time, as tests make them
        with override_settings(AUTH={"ENABLED": True, "TOKENS": {"svc": token}}):
            async with serve(routes=routes, middleware=middleware) as server, grpc.aio.insecure_channel(server.address) as channel:
                say = channel.unary_unary(SAY_HELLO, request_serializer=HelloRequest.SerializeToString,
                                          response_deserializer=HelloReply.FromString)
                reply = await say(HelloRequest(name="identity"), metadata=[("authorization", f"Bearer {token}")], timeout=5)
                assert reply.message == "svc"
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await say(HelloRequest(name="identity"), timeout=5)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "credentials required" in (raised.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await say(HelloRequest(), metadata=[("authorization", f"Basic {token}")], timeout=5)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_independent_tls_handshakes(secured: Secured) -> None:
    """openssl s_client, not grpc: the server's TLS as any client sees it."""
    openssl = require_binary("openssl")
    pki = secured.pki

    def handshake(*args: str) -> tuple[int, str]:
        result = subprocess.run(
            [openssl, "s_client", "-connect", secured.server.address, "-alpn", "h2", "-brief",
             "-verify_return_error", *args],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )
        return result.returncode, result.stderr.decode(errors="replace")

    code, out = handshake("-CAfile", str(pki.ca), "-cert", str(pki.client_cert), "-key", str(pki.client_key))
    assert code == 0 and "Verification: OK" in out and "Peer certificate: CN = etcd" in out, out
    code, out = handshake("-CAfile", str(pki.other_ca), "-cert", str(pki.client_cert), "-key", str(pki.client_key))
    assert code != 0 and "certificate verify failed" in out, out  # the client does not trust it
    # No client certificate: mTLS refuses. Under TLS 1.2 the handshake itself fails; under TLS
    # 1.3 the client's side completes first and the server's refusal comes after it, so the
    # client waits for the server (-ign_eof) and sees the connection closed on it.
    code, out = handshake("-CAfile", str(pki.ca), "-tls1_2")
    assert code != 0, out
    code, out = handshake("-CAfile", str(pki.ca), "-tls1_3", "-ign_eof")
    assert code != 0 and "DONE" not in out, out
