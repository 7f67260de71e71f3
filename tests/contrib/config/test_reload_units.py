"""The parts of hot reload that need no etcd: what can change live, what the checks say of
CONFIG, and what the batteries rebuild on ``setting_changed`` (clients, breakers, the log
level, the server's chains)."""

from __future__ import annotations

import logging

import grpc
import pytest

from microframe.client.breaker import get_breaker
from microframe.client.client import Client
from microframe.contrib.config.live import restart_keys
from microframe.core.checks.registry import run_checks
from microframe.test.utils import override_settings


def test_what_can_change_while_the_service_runs():
    assert restart_keys("LIMITER", {"OPTIONS": {"rate": 1}}, {"OPTIONS": {"rate": 2}}) == []
    assert restart_keys("LOG", {"LEVEL": "INFO", "DIR": None},
                        {"LEVEL": "DEBUG", "DIR": None}) == []
    assert restart_keys("LOG", {"LEVEL": "INFO", "FORMAT": "text"},
                        {"LEVEL": "DEBUG", "FORMAT": "json"}) == ["FORMAT"]
    old = {"orders": {"TIMEOUT": 1.0, "BALANCER": "p2c_ewma"}}
    assert restart_keys("CLIENTS", old, {"orders": {"TIMEOUT": 0.5, "BALANCER": "p2c_ewma"}}) == []
    assert restart_keys("CLIENTS", old, {"orders": {"TIMEOUT": 1.0, "BALANCER": "random"}}) == [
        "orders.BALANCER"
    ]
    assert restart_keys("CLIENTS", old, {**old, "users": {"TLS": None}}) == []  # a new client
    assert restart_keys("GRPC", {"PORT": 1}, {"PORT": 2}) == ["*"]
    assert restart_keys("FEATURES", {"beta": False}, {"beta": True}) == []  # the service's own


def ids(**settings: object) -> set[str]:
    with override_settings(**settings):
        return {m.id for m in run_checks(tags=["config"])}


@pytest.mark.parametrize("config, wanted", [
    ([], "config.E001"),
    ({"BACKEND": "no.such.Backend"}, "config.E001"),
    ({"PREFIX": "config"}, "config.E001"),
    ({"RELOAD": "LIMITER"}, "config.E001"),
    ({"OPTIONS": ["127.0.0.1:2379"]}, "config.E001"),
    ({"CACHE": "/tmp"}, "config.E001"),
    ({"RELOAD": ["LIMITER", "GRPC"]}, "config.E002"),
])
def test_config_checks(config, wanted):
    from microframe.conf import global_settings

    value = config if not isinstance(config, dict) else {**global_settings.CONFIG, **config}
    assert wanted in ids(CONFIG=value)


def test_the_default_config_passes_its_checks():
    assert ids() == set()


def test_clients_take_new_options_and_breakers_new_thresholds():
    client = Client("orders", address="127.0.0.1:1")
    assert client.options.timeout == 2.0
    breaker = get_breaker("orders", "/x.Y/Z", client.options.breaker)
    volume = breaker.options["REQUEST_VOLUME_THRESHOLD"]
    with override_settings(CLIENTS={"orders": {
        "TIMEOUT": 0.25, "BREAKER": {"REQUEST_VOLUME_THRESHOLD": volume + 7},
        "RETRY": {"BUDGET_RATIO": 0.5},
    }}):
        assert client.options.timeout == 0.25
        assert client.retry_budget.ratio == 0.5
        assert get_breaker("orders", "/x.Y/Z", client.options.breaker) is breaker
        assert breaker.options["REQUEST_VOLUME_THRESHOLD"] == volume + 7
        # Invalid options for a live client: it keeps what it has.
        with override_settings(CLIENTS={"orders": {"TIMEOUT": -1}}):
            assert client.options.timeout == 0.25
    assert client.options.timeout == 2.0


def test_the_log_level_follows_log():
    logger = logging.getLogger("microframe")
    before = logger.level
    try:
        from microframe.batteries import setup_batteries

        setup_batteries()  # the logging battery follows LOG (logging itself left as it is)
        with override_settings(LOG={"LEVEL": "DEBUG"}):
            assert logger.level == logging.DEBUG
        with override_settings(LOG={"LEVEL": "TRACE"}):
            assert logger.level == logging.getLevelName("TRACE")
    finally:
        logger.setLevel(before)


async def test_a_serving_server_rebuilds_its_chains_when_the_limiter_changes():
    from microframe.core.router import load_routes
    from microframe.core.server import Server, ServerConfig

    from example.generate import hello_pb2, hello_pb2_grpc

    with override_settings(LIMITER={
        "ENABLED": True, "BACKEND": "microframe.contrib.limiter.backends.TokenBucket",
        "OPTIONS": {"rate": 0.001, "burst": 2}, "MODE": "reject", "MAX_WAIT": 1.0,
        "KEY": "service", "METHODS": {},
    }):
        server = Server(
            load_routes("example.app.router"),
            middleware=["microframe.contrib.limiter.middleware.RateLimitMiddleware"],
            config=ServerConfig.from_settings(host="127.0.0.1", port=0, transport="grpc.aio"),
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = hello_pb2_grpc.GreeterStub(channel)

                async def admitted(n: int) -> int:
                    ok = 0
                    for _ in range(n):
                        try:
                            await stub.SayHello(hello_pb2.HelloRequest(name="a"), timeout=5)
                            ok += 1
                        except grpc.aio.AioRpcError as err:
                            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    return ok

                assert await admitted(5) == 2
                with override_settings(merge=True, LIMITER={"OPTIONS": {"rate": 0.001,
                                                                          "burst": 4}}):
                    assert await admitted(6) == 4
                    with override_settings(merge=True, LIMITER={"ENABLED": False}):
                        assert await admitted(10) == 10
        finally:
            await server.stop(0)


def test_a_cache_another_user_could_have_written_is_never_read(tmp_path, monkeypatch, caplog):
    """A service starting while etcd is down takes its settings from the cache: a cache
    directory in the temporary directory that another user made, or that every user may write
    in, must not hand it settings someone else wrote."""
    import os
    import tempfile

    from microframe.contrib.config import layers as config_layers
    from microframe.contrib.config.backend import Layers, entry

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(config_layers, "DEFAULT_CACHE_DIR",
                        tmp_path / f"microframe-config-{os.geteuid()}")
    with override_settings(CONFIG={"BACKEND": None, "CACHE_DIR": None}):
        layers = Layers(service={"AUTH": entry('{"TOKENS": ["planted"]}', 7)}, revision=7)
        config_layers.save_cache("svc", layers, "etcd")
        directory = config_layers.DEFAULT_CACHE_DIR
        assert oct(directory.stat().st_mode & 0o777) == "0o700"
        assert config_layers.load_cache("svc") is not None
        for mode, owner in ((0o777, os.geteuid()), (0o700, 65534)):
            directory.chmod(mode)
            os.chown(directory, owner, -1)
            with caplog.at_level(logging.WARNING, "microframe.config"):
                assert config_layers.load_cache("svc") is None
            assert "ignoring the configuration cache" in caplog.text
            caplog.clear()
            # Nor is anything written there.
            config_layers.save_cache("svc", layers, "etcd")
            assert "cannot write the configuration cache" in caplog.text
