"""System checks: the framework, the built-in checks and the ``check`` command.

The command runs as a user runs it, ``python -m microframe check --settings ...``, against
small services written into a temporary directory; the checks' details run in-process with
``override_settings``.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from microframe.conf import settings
from microframe.core import checks
from microframe.core.checks import (
    CRITICAL,
    DEBUG,
    ERROR,
    INFO,
    WARNING,
    CheckMessage,
    CheckRegistry,
    Critical,
    Debug,
    Error,
    Info,
    Tags,
    Warning,
    run_checks,
)
from microframe.management.base import OutputWrapper, SystemCheckError
from microframe.management.checks import run_and_report
from microframe.test import override_settings

from support.env import ROOT

PACKAGE = "mfcheck_svc"  # unique: the in-process tests import its modules

MIDDLEWARE_PY = '''
from microframe.core.exceptions import MiddlewareNotUsed


class Passthrough:
    def __init__(self, next):
        self.next = next

    async def __call__(self, ctx, request):
        return await self.next(ctx, request)


def not_used(next):
    raise MiddlewareNotUsed


def fails_on_bidi(next, route):
    if route.method == "BidiHello":
        raise RuntimeError("cannot reach redis")
    return next


def always_fails(next):
    raise ValueError("broken factory")


def returns_none(next):
    return None
'''

ROUTER_HEAD = '''
from microframe.core.router import rpc
from example.generate import hello_pb2

Greeter = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]


def say_hello(request, context):
    return hello_pb2.HelloReply(message="Hello, " + request.name)


async def lots_of_replies(request, context):
    yield hello_pb2.HelloReply(message=request.name)
'''

ROUTERS = {
    "router": ROUTER_HEAD + '''
routes = [
    rpc(Greeter, "SayHello", say_hello),
    rpc(Greeter, "LotsOfReplies", lots_of_replies),
    rpc(Greeter, "BidiHello", say_hello),
]
''',
    "bad_router": ROUTER_HEAD + '''
routes = [
    rpc(Greeter, "SayHello", say_hello),
    rpc(Greeter, "SayHello", say_hello),
    rpc(Greeter, "LotsOfReplies", "lots_of_replies"),
    "not a route",
]
''',
    "extras_router": ROUTER_HEAD + f'''
routes = [
    rpc(Greeter, "SayHello", say_hello, middleware=["{PACKAGE}.mw.returns_none"]),
    rpc(Greeter, "BidiHello", say_hello, middleware=["{PACKAGE}.gone.Audit"]),
]
''',
    "no_routes": ROUTER_HEAD,
    "empty_router": ROUTER_HEAD + "\nroutes = []\n",
    "dict_router": ROUTER_HEAD + "\nroutes = {'SayHello': say_hello}\n",
    "raising_router": "raise RuntimeError('router exploded')\n",
    # Routers that exist but whose import fails further down, in the service's own code.
    "ctl_ok": "def say_hello(ctx, request):\n    return None\n",
    "ctl_syntax": "def say_hello(ctx, request)\n    return None\n",
    "ctl_needs_dependency": "import no_such_dependency_xyz  # noqa\n",
    "ctl_raises": "import os\n\nLIMIT = int(os.environ['MFCHECK_NO_SUCH_VARIABLE'])\n",
    "syntax_router": f"from {PACKAGE} import ctl_syntax\nroutes = []\n",
    "dependency_router": f"from {PACKAGE} import ctl_needs_dependency\nroutes = []\n",
    "renamed_router": f"import os\nfrom {PACKAGE}.ctl_ok import say_helo\nroutes = []\n",
    "raising_ctl_router": f"from {PACKAGE} import ctl_raises\nroutes = []\n",
    "missing_module_router": f"from {PACKAGE} import ctl_gone\nroutes = []\n",
    "bad_method_router": ROUTER_HEAD + '\nroutes = [rpc(Greeter, "SayHelo", say_hello)]\n',
}

# Controllers of every shape, each routed alone by a router "sig_<name>": (the method, the
# code defining `controller`, the signature the check reports, or None when it accepts it).
SIGNATURES: dict[str, tuple[str, str, str | None]] = {
    "request_only": ("SayHello", "def controller(request):\n    return None\n", "(request)"),
    "extra_required": (
        "SayHello", "async def controller(ctx, request, extra):\n    return None\n",
        "(ctx, request, extra)"),
    "keyword_required": (
        "SayHello", "def controller(ctx, request, *, user):\n    return None\n",
        "(ctx, request, *, user)"),
    "no_arguments": ("SayHello", "def controller():\n    return None\n", "()"),
    "unbound_method": (
        "SayHello",
        "class Greeter:\n    def say_hello(self, ctx, request):\n        return None\n\n\n"
        "controller = Greeter.say_hello\n",
        "(self, ctx, request)"),
    "stream_request_only": (
        "LotsOfGreetings", "async def controller(request_iterator):\n    return None\n",
        "(request_iterator)"),
    "bidi_three": (
        "BidiHello", "async def controller(ctx, requests, more):\n    yield None\n",
        "(ctx, requests, more)"),
    "plain": ("SayHello", "def controller(ctx, request):\n    return None\n", None),
    "named_otherwise": ("SayHello", "def controller(request, context):\n    return None\n", None),
    "defaults": (
        "SayHello", "async def controller(ctx, request, extra=None, *, user=None):\n"
        "    return None\n", None),
    "var_args": ("SayHello", "def controller(*args, **kwargs):\n    return None\n", None),
    "ctx_and_rest": ("SayHello", "def controller(ctx, *rest):\n    return None\n", None),
    "bound_method": (
        "SayHello",
        "class Greeter:\n    async def say_hello(self, ctx, request):\n        return None\n\n\n"
        "controller = Greeter().say_hello\n", None),
    "class_and_static_methods": (
        "SayHello",
        "class Greeter:\n    @classmethod\n    def hello(cls, ctx, request):\n"
        "        return None\n\n"
        "    @staticmethod\n    def other(ctx, request):\n        return None\n\n\n"
        "controller = Greeter.hello\nother = Greeter.other\n", None),
    "callable_object": (
        "SayHello",
        "class Greeter:\n    async def __call__(self, ctx, request):\n        return None\n\n\n"
        "controller = Greeter()\n", None),
    "partial": (
        "SayHello",
        "import functools\n\n\ndef hello(greeting, ctx, request):\n    return None\n\n\n"
        "controller = functools.partial(hello, 'hi')\n", None),
    "decorated": (
        "SayHello",
        "import functools\n\n\ndef logged(fn):\n    @functools.wraps(fn)\n"
        "    def wrapper(*args, **kwargs):\n        return fn(*args, **kwargs)\n"
        "    return wrapper\n\n\n"
        "@logged\ndef controller(ctx, request):\n    return None\n", None),
    "server_stream": (
        "LotsOfReplies", "async def controller(ctx, request):\n    yield None\n", None),
    "client_stream_sync": (
        "LotsOfGreetings", "def controller(ctx, request_iterator):\n    return None\n", None),
}
for _name, (_method, _code, _found) in SIGNATURES.items():
    ROUTERS[f"sig_{_name}"] = (
        "from microframe.core.router import rpc\nfrom example.generate import hello_pb2\n\n"
        'GreeterService = hello_pb2.DESCRIPTOR.services_by_name["Greeter"]\n\n\n'
        f"{_code}\n\nroutes = [rpc(GreeterService, {_method!r}, controller)]\n"
    )


@pytest.fixture(scope="module", autouse=True)
def _settings_configured() -> None:
    if not settings.configured:
        settings.configure()


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory holding the package PACKAGE: middleware, routers and settings modules."""
    base = tmp_path_factory.mktemp("checks")
    package = base / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mw.py").write_text(MIDDLEWARE_PY)
    for name, text in ROUTERS.items():
        (package / f"{name}.py").write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(base))
        mp.syspath_prepend(str(ROOT))
        yield base


def write_settings(service_dir: Path, name: str, text: str) -> str:
    """Write the settings module ``name`` of PACKAGE; return its dotted path."""
    (service_dir / PACKAGE / f"{name}.py").write_text(textwrap.dedent(text))
    return f"{PACKAGE}.{name}"


def run_check(service_dir: Path, settings_module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m microframe check`` as a user would, from the service's directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "microframe", "check", "--settings", settings_module,
         "--pythonpath", str(service_dir), *args],
        cwd=service_dir, env=env, capture_output=True, text=True, timeout=60,
    )


def reported(output: str, check_id: str) -> list[str]:
    """Return the messages of ``check_id`` in the command's output."""
    return re.findall(rf"^\?: \({re.escape(check_id)}\) (.*)$", output, flags=re.MULTILINE)


def all_ids(output: str) -> list[str]:
    return re.findall(r"^\?: \(([\w.]+)\) ", output, flags=re.MULTILINE)


#: The example's proto carries validation rules: a MIDDLEWARE of a test keeps their middleware,
#: or check warns (validation.W001).
VALIDATION = "microframe.contrib.validation.middleware.ValidationMiddleware"
CLEAN = f"""
    SERVICE_NAME = "greeter"
    ROOT_ROUTER = "{PACKAGE}.router"
    MIDDLEWARE = ["{PACKAGE}.mw.Passthrough", "{PACKAGE}.mw.not_used", "{VALIDATION}"]
    GRPC = {{"HOST": "127.0.0.1", "PORT": 50051}}
    METRICS = {{"HOST": "127.0.0.1", "PORT": 9464, "LABELS": {{"env": "dev"}}}}
"""


# The command, as a subprocess. ----------------------------------------------------------------


def transport_line() -> str:
    """What ``check`` says of the transport on default settings (the native extra is installed
    for the tests)."""
    from microframe.core.server import ServerConfig
    from microframe.core.transport import choose_transport

    transport, reason = choose_transport(ServerConfig())
    return f"Transport: {transport.name} ({reason})"


def test_clean_service_passes(service_dir):
    result = run_check(service_dir, write_settings(service_dir, "clean", CLEAN))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "System check identified no issues (0 silenced)."
    # Then the transport runserver would serve on, and why.
    assert result.stdout.splitlines()[1:] == [transport_line()], result.stdout
    assert result.stderr == ""


def test_example_service_passes():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_wrong_types_are_reported_one_per_setting(service_dir):
    module = write_settings(service_dir, "wrong_types", CLEAN + """
    DEBUG = "yes"
    SERVICE_NAME = ""
    SILENCED_SYSTEM_CHECKS = "microframe.W001"
    GRPC = {
        "MAX_MESSAGE_BYTES": 0, "MAX_CONCURRENT_RPCS": -5, "GRACE": -1.0, "HEALTH": "yes",
        "REFLECTION": 1, "EVENT_LOOP": "trio",
    }
    METRICS = {"LABELS": {"env": 1}, "ENABLED": "on"}
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("SystemCheckError: System check identified some issues:")
    messages = reported(result.stderr, "microframe.E001")
    named = sorted(m.split(" must be ")[0] for m in messages)
    assert named == sorted([
        "DEBUG", "SERVICE_NAME", "SILENCED_SYSTEM_CHECKS", 'GRPC["MAX_MESSAGE_BYTES"]',
        'GRPC["MAX_CONCURRENT_RPCS"]', 'GRPC["GRACE"]', 'GRPC["HEALTH"]', 'GRPC["REFLECTION"]',
        'GRPC["EVENT_LOOP"]', 'METRICS["LABELS"]', 'METRICS["ENABLED"]',
    ])
    assert "DEBUG must be a bool, not 'yes' (str)." in messages
    assert result.stderr.count("\tHINT: ") == len(all_ids(result.stderr)) == len(messages)
    assert "System check identified 11 issues (0 silenced)." in result.stderr


def test_settings_of_the_wrong_shape(service_dir):
    module = write_settings(service_dir, "wrong_shape", CLEAN + """
    GRPC = ["127.0.0.1", 50051]
    METRICS = None
    MIDDLEWARE = "microframe.contrib.metrics.middleware.MetricsMiddleware"
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 1
    messages = reported(result.stderr, "microframe.E001")
    assert len(messages) == 3
    assert any(m.startswith("GRPC must be a dict") for m in messages)
    assert any(m.startswith("METRICS must be a dict") for m in messages)
    assert any(m.startswith("MIDDLEWARE must be a list of dotted paths") for m in messages)


def test_middleware_that_cannot_be_imported_or_built(service_dir):
    module = write_settings(service_dir, "bad_middleware", CLEAN + f"""
    MIDDLEWARE = [
        "{PACKAGE}.mw.Passthrough",
        "{PACKAGE}.mw.not_used",
        "{PACKAGE}.missing.Middleware",
        "{PACKAGE}.mw.Missing",
        "{PACKAGE}.mw.fails_on_bidi",
        "{PACKAGE}.mw.returns_none",
        "{VALIDATION}",
    ]
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    e002 = reported(result.stderr, "microframe.E002")
    assert len(e002) == 2
    assert any(f"'{PACKAGE}.missing.Middleware'" in m and "No module named" in m for m in e002)
    assert any(f"'{PACKAGE}.mw.Missing'" in m and "does not define" in m for m in e002)
    e003 = reported(result.stderr, "microframe.E003")
    assert len(e003) == 2
    assert any(
        f"'{PACKAGE}.mw.fails_on_bidi'" in m and "/helloworld.Greeter/BidiHello" in m
        and "RuntimeError: cannot reach redis" in m
        for m in e003
    )
    assert any(f"'{PACKAGE}.mw.returns_none'" in m and "not a handler" in m for m in e003)
    assert "Passthrough" not in result.stderr and "not_used" not in result.stderr
    assert set(all_ids(result.stderr)) == {"microframe.E002", "microframe.E003"}


def test_missing_router_still_builds_middleware(service_dir):
    module = write_settings(service_dir, "missing_router", CLEAN + f"""
    ROOT_ROUTER = "{PACKAGE}.no_such_router"
    MIDDLEWARE = ["{PACKAGE}.mw.always_fails", "{PACKAGE}.mw.fails_on_bidi", "{VALIDATION}"]
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 1
    (e004,) = reported(result.stderr, "microframe.E004")
    assert f"'{PACKAGE}.no_such_router'" in e004 and "cannot be imported" in e004
    (e003,) = reported(result.stderr, "microframe.E003")
    assert f"'{PACKAGE}.mw.always_fails'" in e003 and "ValueError: broken factory" in e003


def test_broken_routes(service_dir):
    module = write_settings(service_dir, "bad_routes", CLEAN + f"""
    ROOT_ROUTER = "{PACKAGE}.bad_router"
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 1
    e005 = reported(result.stderr, "microframe.E005")
    assert len(e005) == 3
    assert any("/helloworld.Greeter/SayHello is routed twice" in m for m in e005)
    assert any("controller of /helloworld.Greeter/LotsOfReplies is not callable" in m for m in e005)
    assert any("'not a route' is not a Route" in m for m in e005)
    assert "microframe.E004" not in result.stderr


def test_bad_ports_and_port_clash(service_dir):
    bad = write_settings(service_dir, "bad_ports", CLEAN + """
    GRPC = {"PORT": 70000}
    METRICS = {"PORT": "9464"}
    """)
    clash = write_settings(service_dir, "port_clash", CLEAN + """
    GRPC = {"HOST": "0.0.0.0", "PORT": 7000}
    METRICS = {"HOST": "127.0.0.1", "PORT": 7000}
    """)
    result = run_check(service_dir, bad)
    assert result.returncode == 1
    e006 = reported(result.stderr, "microframe.E006")
    assert sorted(m.split(" must be ")[0] for m in e006) == ['GRPC["PORT"]', 'METRICS["PORT"]']
    assert "not 70000 (int)" in e006[0] + e006[1] and "not '9464' (str)" in e006[0] + e006[1]
    result = run_check(service_dir, clash)
    assert result.returncode == 1
    (e007,) = reported(result.stderr, "microframe.E007")
    assert "both 7000" in e007


def test_unknown_grpc_and_metrics_keys_fail_the_check(service_dir):
    module = write_settings(service_dir, "typo_keys", CLEAN + """
    GRPC = {"HOST": "127.0.0.1", "PROT": 50052}
    METRICS = {"ENABLE": False}
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    messages = reported(result.stderr, "microframe.E001")
    assert sorted(messages) == ["GRPC has unknown keys: PROT.", "METRICS has unknown keys: ENABLE."]
    assert "HINT: Did you mean 'PORT' (not 'PROT')?" in result.stderr
    assert "HINT: Did you mean 'ENABLED' (not 'ENABLE')?" in result.stderr


def test_silenced_checks_do_not_fail(service_dir):
    module = write_settings(service_dir, "silenced", CLEAN + """
    DEBUG = "no"
    GRPC = {"PORT": -1}
    SILENCED_SYSTEM_CHECKS = ["microframe.E001", "microframe.E006"]
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "System check identified no issues (2 silenced).", transport_line(),
    ], result.stdout


def test_deploy_checks_and_fail_level(service_dir):
    module = write_settings(service_dir, "exposed", CLEAN + """
    DEBUG = True
    GRPC = {"HOST": "0.0.0.0", "PORT": 50051}
    METRICS = {"HOST": "0.0.0.0", "PORT": 9464}
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout

    result = run_check(service_dir, module, "--deploy")
    assert result.returncode == 0, result.stderr
    assert sorted(all_ids(result.stderr)) == [
        "microframe.W001", "microframe.W002", "microframe.W003", "registry.I001"
    ]
    assert result.stderr.startswith("System check identified some issues:\n\nWARNINGS:\n")
    assert result.stderr.rstrip().endswith("System check identified 4 issues (0 silenced).")

    result = run_check(service_dir, module, "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 1
    assert result.stderr.startswith("SystemCheckError: ")
    assert "Traceback" not in result.stderr


def test_tags_select_checks(service_dir):
    module = write_settings(service_dir, "two_problems", CLEAN + """
    ROOT_ROUTER = None
    GRPC = {"PORT": 123456}
    """)
    result = run_check(service_dir, module, "--tag", "router")
    assert result.returncode == 1
    assert all_ids(result.stderr) == ["microframe.E004"]
    assert "ROOT_ROUTER is not set" in result.stderr
    result = run_check(service_dir, module, "-t", "server", "-t", "metrics")
    assert all_ids(result.stderr) == ["microframe.E006"]
    result = run_check(service_dir, module, "-t", "middleware")
    assert result.returncode == 0, result.stderr


def test_list_tags(service_dir):
    module = write_settings(service_dir, "tags", CLEAN)
    result = run_check(service_dir, module, "--list-tags")
    assert result.returncode == 0
    assert result.stdout.split() == [
        "auth", "client", "config", "coordination", "gateway", "limiter", "logging", "metrics", "middleware",
        "registry", "router", "server", "settings", "tracing", "validation",
    ]
    result = run_check(service_dir, module, "--list-tags", "--deploy")
    assert result.stdout.split() == [
        "auth", "client", "config", "coordination", "gateway", "limiter", "logging", "metrics", "middleware",
        "registry", "router", "security", "server", "settings", "tracing", "validation",
    ]


def test_unknown_tag_is_a_clean_error(service_dir):
    module = write_settings(service_dir, "unknown_tag", CLEAN)
    result = run_check(service_dir, module, "--tag", "nope")
    assert result.returncode == 1
    assert result.stderr.strip() == 'CommandError: There is no system check with the "nope" tag.'
    result = run_check(service_dir, module, "--tag", "security")
    assert result.returncode == 1 and '"security" tag' in result.stderr
    result = run_check(service_dir, module, "--tag", "security", "--deploy")
    assert result.returncode == 0, result.stderr


# The built-in checks, in-process. -------------------------------------------------------------


@pytest.fixture
def clean(service_dir) -> Iterator[None]:
    """Settings of a sound service, to break one thing at a time."""
    with override_settings(
        SERVICE_NAME="greeter",
        DEBUG=False,
        ROOT_ROUTER=f"{PACKAGE}.router",
        MIDDLEWARE=[f"{PACKAGE}.mw.Passthrough", VALIDATION],
        SILENCED_SYSTEM_CHECKS=[],
        GRPC={"HOST": "127.0.0.1", "PORT": 50051, "TLS": None, "MAX_MESSAGE_BYTES": 4 << 20,
              "MAX_CONCURRENT_RPCS": 1000, "GRACE": 10.0, "HEALTH": True, "REFLECTION": True,
              "THREADS": None, "EVENT_LOOP": "auto", "OPTIONS": []},
        METRICS={"ENABLED": True, "HOST": "127.0.0.1", "PORT": 9464, "LABELS": {},
                 "BUCKETS": (0.01, 0.1, 1.0)},
        REGISTRY={"BACKEND": "microframe.contrib.registry.static.StaticRegistry", "OPTIONS": {},
                  "REGISTER": False},
    ):
        yield


def issues(tags: list[str] | None = None, deploy: bool = False, **overrides: Any) -> list[CheckMessage]:
    """The core checks' messages (the registry battery's are tested in test_registry.py)."""
    with override_settings(merge=True, **overrides):
        found = run_checks(tags=tags, include_deployment_checks=deploy)
    return [m for m in found if not (m.id or "").startswith("registry.")]


def ids(**kwargs: Any) -> list[str | None]:
    return [issue.id for issue in issues(**kwargs)]


def test_clean_settings_have_no_issues(clean):
    assert issues(deploy=True) == []


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"DEBUG": 1}, "DEBUG"),
        ({"SERVICE_NAME": None}, "SERVICE_NAME"),
        ({"SERVICE_NAME": "  "}, "SERVICE_NAME"),
        ({"MIDDLEWARE": [42]}, "MIDDLEWARE"),
        ({"MIDDLEWARE": {"a": "b"}}, "MIDDLEWARE"),
        ({"SILENCED_SYSTEM_CHECKS": [1]}, "SILENCED_SYSTEM_CHECKS"),
        ({"LOGGING": []}, "LOGGING"),
        ({"ROOT_ROUTER": 3}, "ROOT_ROUTER"),
        ({"GRPC": {"HOST": 127}}, 'GRPC["HOST"]'),
        ({"GRPC": {"MAX_MESSAGE_BYTES": True}}, 'GRPC["MAX_MESSAGE_BYTES"]'),
        ({"GRPC": {"MAX_MESSAGE_BYTES": "4MB"}}, 'GRPC["MAX_MESSAGE_BYTES"]'),
        ({"GRPC": {"MAX_CONCURRENT_RPCS": 0}}, 'GRPC["MAX_CONCURRENT_RPCS"]'),
        ({"GRPC": {"GRACE": "10"}}, 'GRPC["GRACE"]'),
        ({"GRPC": {"THREADS": 0}}, 'GRPC["THREADS"]'),
        ({"GRPC": {"EVENT_LOOP": ["uvloop"]}}, 'GRPC["EVENT_LOOP"]'),
        ({"GRPC": {"OPTIONS": [("grpc.x",)]}}, 'GRPC["OPTIONS"]'),
        ({"GRPC": {"RECEIVE_TIMEOUT": 0}}, 'GRPC["RECEIVE_TIMEOUT"]'),
        ({"GRPC": {"STREAM_IDLE_TIMEOUT": "60"}}, 'GRPC["STREAM_IDLE_TIMEOUT"]'),
        ({"GRPC": {"MAX_METADATA_BYTES": 100}}, 'GRPC["MAX_METADATA_BYTES"]'),
        ({"GRPC": {"STREAM_WINDOW_BYTES": 1 << 31}}, 'GRPC["STREAM_WINDOW_BYTES"]'),
        ({"GRPC": {"MAX_CALLS_PER_CONNECTION": 0}}, 'GRPC["MAX_CALLS_PER_CONNECTION"]'),
        ({"METRICS": {"LABELS": {"bad-name": "x"}}}, 'METRICS["LABELS"]'),
        ({"METRICS": {"LABELS": {"__reserved": "x"}}}, 'METRICS["LABELS"]'),
        ({"METRICS": {"LABELS": ["env"]}}, 'METRICS["LABELS"]'),
        ({"METRICS": {"HOST": ""}}, 'METRICS["HOST"]'),
        ({"METRICS": {"BUCKETS": []}}, 'METRICS["BUCKETS"]'),
        ({"METRICS": {"BUCKETS": (1.0, 0.5)}}, 'METRICS["BUCKETS"]'),
    ],
)
def test_wrong_setting(clean, overrides, setting):
    (issue,) = issues(**overrides)
    assert issue.id == "microframe.E001" and issue.level == ERROR
    assert issue.msg.startswith(f"{setting} must be ")
    assert issue.hint


@pytest.mark.parametrize(
    ("overrides", "setting", "typo", "known"),
    [
        ({"GRPC": {"PROT": 50052}}, "GRPC", "PROT", "PORT"),
        ({"GRPC": {"MAX_CALLS_PER_CONECTION": 5}}, "GRPC", "MAX_CALLS_PER_CONECTION",
         "MAX_CALLS_PER_CONNECTION"),
        ({"GRPC": {"tls": None}}, "GRPC", "tls", "TLS"),
        ({"METRICS": {"PORTS": 9465}}, "METRICS", "PORTS", "PORT"),
        ({"METRICS": {"LABEL": {}}}, "METRICS", "LABEL", "LABELS"),
    ],
)
def test_unknown_keys(clean, overrides, setting, typo, known):
    (issue,) = issues(**overrides)
    assert issue.id == "microframe.E001" and issue.level == ERROR
    assert issue.msg == f"{setting} has unknown keys: {typo}."
    assert issue.hint.startswith(f"Did you mean {known!r} (not {typo!r})?"), issue.hint


def test_unknown_keys_without_a_close_one(clean):
    (issue,) = issues(GRPC={"COLOUR": "blue", "ZZZ": 1})
    assert issue.id == "microframe.E001" and issue.msg == "GRPC has unknown keys: COLOUR, ZZZ."
    assert "Did you mean" not in issue.hint and "Known keys: " in issue.hint


def test_every_grpc_and_metrics_key_the_code_reads_is_known(clean):
    """A key global_settings defines or the code reads is never reported as unknown."""
    from microframe.conf import global_settings

    read: dict[str, set[str]] = {"GRPC": set(), "METRICS": set()}
    pattern = re.compile(r'\b(GRPC|METRICS)(?:\[|\.get\()"([A-Z_]+)"')
    for path in (ROOT / "microframe").rglob("*.py"):
        for setting, key in pattern.findall(path.read_text(encoding="utf-8")):
            read[setting].add(key)
    assert {"MAX_CALLS_PER_CONNECTION", "EVENT_LOOP", "TLS", "SHUTDOWN_DELAY"} <= read["GRPC"]
    grpc = {**global_settings.GRPC, **{k: global_settings.GRPC.get(k) for k in read["GRPC"]}}
    metrics = {**global_settings.METRICS,
               **{k: global_settings.METRICS.get(k) for k in read["METRICS"]}}
    assert issues(GRPC=grpc, METRICS=metrics) == []


@pytest.mark.parametrize(
    ("limits", "text"),
    [
        ({"MAX_CONCURRENT_RPCS": 100, "MAX_CALLS_PER_CONNECTION": 100}, "every one of the 100 call slots"),
        ({"MAX_STREAMS_PER_CONNECTION": 50}, "below the calls one connection may run (250)"),
        ({"RECEIVE_BUFFER_BYTES": 8 << 20}, "holds 2 message(s)"),
    ],
)
def test_contradicting_limits_warn(clean, limits, text):
    (issue,) = issues(GRPC=limits)
    assert issue.id == "microframe.W006" and text in issue.msg, issue.msg


@pytest.mark.parametrize(
    "overrides",
    [
        {"GRPC": {"MAX_CONCURRENT_RPCS": None, "GRACE": 0, "THREADS": 4, "EVENT_LOOP": "asyncio"}},
        {"GRPC": {"OPTIONS": [("grpc.keepalive_time_ms", 10000)], "HOST": "::"}},
        {"METRICS": {"LABELS": {"env": "prod", "idc": "sh"}, "BUCKETS": [1, 2.5]}},
        {"MIDDLEWARE": (VALIDATION,)},
        {"SILENCED_SYSTEM_CHECKS": ("microframe.W001",), "CONF_DIR": "/etc/svc"},
    ],
)
def test_accepted_settings(clean, overrides):
    assert issues(**overrides) == []


@pytest.mark.parametrize("cap", [0, -1, "0.5", True, None, float("nan")])
def test_a_method_timeout_that_is_not_a_positive_number(clean, cap):
    (issue,) = issues(GRPC={"METHOD_TIMEOUTS": {"/helloworld.Greeter/SayHello": cap}})
    assert issue.id == "microframe.E014" and issue.level == ERROR
    assert issue.msg.startswith(
        """GRPC["METHOD_TIMEOUTS"]['/helloworld.Greeter/SayHello'] must be a positive number"""
    ), issue.msg


def test_method_timeouts_that_are_not_a_dict(clean):
    (issue,) = issues(GRPC={"METHOD_TIMEOUTS": [("/helloworld.Greeter/SayHello", 1)]})
    assert issue.id == "microframe.E001"
    assert issue.msg.startswith('GRPC["METHOD_TIMEOUTS"] must be a dict of method names')


@pytest.mark.parametrize(
    ("name", "what", "guess"),
    [
        ("/helloworld.Greeter/SayHelo", "which is no method this service serves",
         "'/helloworld.Greeter/SayHello'"),
        ("/helloworld.Greeter/LotsOfGreetings", "which is no method this service serves",
         "'/helloworld.Greeter/LotsOfReplies'"),
        ("/other.Service/Get", "which is no method this service serves", None),
        ("/helloworld.Greter/*", "which is no method this service serves",
         "'/helloworld.Greeter/*'"),
        ("SayHello", 'which is not a full method name ("/package.Service/Method")',
         "'/helloworld.Greeter/SayHello'"),
        ("helloworld.Greeter/BidiHello", "which is not a full method name",
         "'/helloworld.Greeter/BidiHello'"),
        ("/", "which is not a full method name", None),
    ],
)
def test_a_method_timeout_of_a_method_not_served(clean, name, what, guess):
    (issue,) = issues(GRPC={"METHOD_TIMEOUTS": {name: 0.5, "/helloworld.Greeter/*": 1}})
    assert issue.id == "microframe.E015" and issue.level == ERROR
    assert issue.msg.startswith(f'GRPC["METHOD_TIMEOUTS"] names {name!r}, {what}'), issue.msg
    if guess:
        assert issue.hint.startswith(f"Did you mean {guess}?"), issue.hint
    else:
        assert "Did you mean" not in issue.hint, issue.hint
    assert issue.hint.endswith(
        "it serves: /helloworld.Greeter/BidiHello, /helloworld.Greeter/LotsOfReplies, "
        "/helloworld.Greeter/SayHello."
    ), issue.hint


def test_method_timeouts_of_methods_served(clean):
    table = {"/helloworld.Greeter/*": 2, "/helloworld.Greeter/SayHello": 0.25}
    assert issues(GRPC={"METHOD_TIMEOUTS": table}) == []


@pytest.mark.parametrize("port", [-1, 65536, "50051", 1.5, True, None])
def test_invalid_port(clean, port):
    assert ids(GRPC={"PORT": port}) == ["microframe.E006"]
    assert ids(METRICS={"PORT": port}) == ["microframe.E006"]


@pytest.mark.parametrize("port", [0, 1, 65535])
def test_valid_port(clean, port):
    assert ids(GRPC={"PORT": port}) == ids(METRICS={"PORT": port}) == []


@pytest.mark.parametrize(
    ("grpc_host", "metrics_host", "port", "enabled", "clash"),
    [
        ("127.0.0.1", "127.0.0.1", 7000, True, True),
        ("0.0.0.0", "10.1.2.3", 7000, True, True),
        ("10.1.2.3", "::", 7000, True, True),
        ("localhost", "127.0.0.1", 7000, True, True),
        ("127.0.0.1", "10.1.2.3", 7000, True, False),
        ("127.0.0.1", "127.0.0.1", 7000, False, False),
        ("127.0.0.1", "127.0.0.1", 0, True, False),
    ],
)
def test_port_clash(clean, grpc_host, metrics_host, port, enabled, clash):
    found = ids(
        tags=[Tags.server, Tags.metrics],
        GRPC={"HOST": grpc_host, "PORT": port},
        METRICS={"HOST": metrics_host, "PORT": port, "ENABLED": enabled},
    )
    assert found == (["microframe.E007"] if clash else [])


def test_tls(clean, tmp_path):
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    assert ids(GRPC={"TLS": {"CERT": str(cert), "KEY": key, "CLIENT_CA": None}}) == []
    assert ids(GRPC={"TLS": {"CERT": str(cert), "KEY": str(key), "CLIENT_CA": str(cert)}}) == []
    assert ids(GRPC={"TLS": "yes"}) == ["microframe.E008"]
    assert ids(GRPC={"TLS": {}}) == ["microframe.E008", "microframe.E008"]
    (missing,) = issues(GRPC={"TLS": {"CERT": str(cert), "KEY": str(tmp_path / "nope.key")}})
    assert missing.id == "microframe.E008" and "nope.key" in missing.msg
    (missing_ca,) = issues(GRPC={"TLS": {"CERT": str(cert), "KEY": str(key), "CLIENT_CA": "ca.pem"}})
    assert "CLIENT_CA" in missing_ca.msg


@pytest.mark.parametrize(
    ("router", "expected"),
    [
        (None, "ROOT_ROUTER is not set"),
        ("", "ROOT_ROUTER is not set"),
        (f"{PACKAGE}.nowhere", "cannot be imported"),
        (f"{PACKAGE}.no_routes", "has no `routes`"),
        (f"{PACKAGE}.dict_router", "must be a list"),
        ("no_such_package.router", "cannot be imported"),
    ],
)
def test_unusable_router(clean, router, expected):
    (issue,) = issues(tags=[Tags.router], ROOT_ROUTER=router)
    assert issue.id == "microframe.E004" and expected in issue.msg
    assert issue.hint.startswith("Set ROOT_ROUTER to the dotted path")


@pytest.mark.parametrize(
    ("router", "error", "where"),
    [
        ("raising_router", "RuntimeError: router exploded", "raising_router.py:1"),
        ("syntax_router", "SyntaxError: expected ':'", "ctl_syntax.py:1"),
        ("dependency_router", "ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
         "ctl_needs_dependency.py:1"),
        ("renamed_router", "ImportError: cannot import name 'say_helo'", "renamed_router.py:2"),
        ("raising_ctl_router", "KeyError: 'MFCHECK_NO_SUCH_VARIABLE'", "ctl_raises.py:3"),
        ("missing_module_router", f"ImportError: cannot import name 'ctl_gone' from '{PACKAGE}'",
         "missing_module_router.py:1"),
        ("bad_method_router", "has no method 'SayHelo'", "bad_method_router.py:"),
    ],
)
def test_router_that_raises_while_importing(clean, router, error, where):
    """A router module that exists but whose import raised (itself or in a module it imports)
    is microframe.E010, with the real error and where it happened, not E004's "set
    ROOT_ROUTER" hint."""
    (issue,) = issues(tags=[Tags.router], ROOT_ROUTER=f"{PACKAGE}.{router}")
    assert issue.id == "microframe.E010", issue
    assert error in issue.msg, issue.msg
    file, line = where.split(":")
    path = re.search(r" at (\S+):(\d+)", issue.msg)
    assert path is not None, issue.msg
    assert Path(path[1]).name == file and path[1].startswith(os.sep), issue.msg
    assert line == "" or path[2] == line, issue.msg
    assert f"{path[1]}, line {path[2]}" in issue.hint and "Set ROOT_ROUTER" not in issue.hint


@pytest.mark.parametrize("name", [n for n, case in SIGNATURES.items() if case[2] is not None])
def test_controller_that_cannot_take_ctx_and_request(clean, name):
    """A controller whose signature cannot take (ctx, request) is microframe.E011, naming the
    route, the controller, where it is defined and the signature found."""
    method, code, signature = SIGNATURES[name]
    (issue,) = issues(tags=[Tags.router], ROOT_ROUTER=f"{PACKAGE}.sig_{name}")
    assert issue.id == "microframe.E011" and issue.level == ERROR, issue
    assert f"/helloworld.Greeter/{method}" in issue.msg, issue.msg
    qualname = "Greeter.say_hello" if name == "unbound_method" else "controller"
    assert f"{PACKAGE}.sig_{name}.{qualname}" in issue.msg, issue.msg
    assert f"{signature}" in issue.msg, issue.msg
    line = code.splitlines().index(next(x for x in code.splitlines() if "def " in x)) + 7
    assert f"sig_{name}.py:{line}" in issue.msg, issue.msg
    shape = "(ctx, requests)" if method in ("LotsOfGreetings", "BidiHello") else "(ctx, request)"
    assert shape in issue.msg and shape in issue.hint, (issue.msg, issue.hint)


@pytest.mark.parametrize("name", [n for n, case in SIGNATURES.items() if case[2] is None])
def test_controllers_that_take_ctx_and_request(clean, name):
    assert issues(tags=[Tags.router], ROOT_ROUTER=f"{PACKAGE}.sig_{name}") == []


def test_check_reports_a_controller_that_cannot_be_called(service_dir):
    module = write_settings(service_dir, "bad_signature", CLEAN + f"""
    ROOT_ROUTER = "{PACKAGE}.sig_request_only"
    """)
    result = run_check(service_dir, module)
    assert result.returncode == 1, result.stdout
    (e011,) = reported(result.stderr, "microframe.E011")
    assert "/helloworld.Greeter/SayHello" in e011 and "(request)" in e011, e011
    assert f"{service_dir / PACKAGE / 'sig_request_only.py'}:7" in e011, e011


def test_empty_router_is_a_warning(clean):
    (issue,) = issues(ROOT_ROUTER=f"{PACKAGE}.empty_router")
    assert issue.id == "microframe.W004" and issue.level == WARNING


def test_routes_own_middleware(clean):
    found = issues(tags=[Tags.middleware], ROOT_ROUTER=f"{PACKAGE}.extras_router")
    assert sorted(i.id for i in found) == ["microframe.E002", "microframe.E003"]
    by_id = {i.id: i.msg for i in found}
    assert "route /helloworld.Greeter/BidiHello" in by_id["microframe.E002"]
    assert "route /helloworld.Greeter/SayHello" in by_id["microframe.E003"]


def test_middleware_given_as_factories(clean):
    from microframe.core.exceptions import MiddlewareNotUsed

    def unused(next):
        raise MiddlewareNotUsed

    def broken(next):
        raise KeyError("x")

    assert ids(MIDDLEWARE=[unused, VALIDATION]) == []
    (issue,) = issues(MIDDLEWARE=[broken, VALIDATION])
    assert issue.id == "microframe.E003" and "broken" in issue.msg and "KeyError" in issue.msg


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"DEBUG": True}, ["microframe.W001"]),
        ({"GRPC": {"HOST": "0.0.0.0"}}, ["microframe.W002"]),
        ({"GRPC": {"HOST": "svc.internal"}}, ["microframe.W002"]),
        ({"GRPC": {"HOST": "localhost"}}, []),
        ({"GRPC": {"HOST": "::1"}}, []),
        ({"GRPC": {"HOST": "[::1]"}}, []),
        ({"GRPC": {"HOST": "127.0.0.2"}}, []),
        ({"METRICS": {"HOST": "0.0.0.0"}}, ["microframe.W003"]),
        ({"METRICS": {"HOST": "0.0.0.0", "ENABLED": False}}, []),
    ],
)
def test_deployment_checks(clean, overrides, expected):
    assert ids(**overrides) == []
    assert ids(deploy=True, **overrides) == expected


def test_tokens_over_plaintext_warn_at_deploy(clean):
    on = {"ENABLED": True, "TOKENS": {"billing": "t"}}
    assert "auth.W001" not in ids(AUTH=on)
    assert "auth.W001" in ids(AUTH=on, deploy=True)
    assert "auth.W001" not in ids(AUTH={"ENABLED": True, "MTLS_IDENTITIES": {"*": "*"}}, deploy=True)


AUTH_MW = ["microframe.contrib.auth.middleware.AuthMiddleware", VALIDATION]


def test_auth_on_without_its_middleware_is_an_error(clean):
    on = {"ENABLED": True, "TOKENS": {"a": "t"}}
    assert "auth.E002" in ids(AUTH=on)  # the service's MIDDLEWARE replaced the default
    assert "auth.E002" not in ids(AUTH=on, MIDDLEWARE=AUTH_MW)
    assert "auth.E002" not in ids(AUTH={**on, "ENABLED": False})


def test_auth_naming_methods_the_router_does_not_serve_warns(clean):
    on = {"ENABLED": True, "TOKENS": {"a": "t"}}
    misspelt = ids(AUTH={**on, "PERMISSIONS": {"/helloworld.Greeter/sayHello": ["a"]}}, MIDDLEWARE=AUTH_MW)
    assert misspelt == ["auth.W002"]
    sound = {**on, "PERMISSIONS": {"/helloworld.Greeter/SayHello": ["a"]}, "EXEMPT": ["/helloworld.Greeter/*"]}
    assert ids(AUTH=sound, MIDDLEWARE=AUTH_MW) == []


def test_tls_silences_plaintext_warning(clean, tmp_path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("pem")
    tls = {"CERT": str(tmp_path / "c.pem"), "KEY": str(tmp_path / "k.pem")}
    assert ids(deploy=True, GRPC={"HOST": "0.0.0.0", "TLS": tls}) == []


def test_silenced_messages(clean):
    issue = Error("x", id="microframe.E006")
    assert not issue.is_silenced()
    with override_settings(SILENCED_SYSTEM_CHECKS=["microframe.E006"]):
        assert issue.is_silenced()
        assert not Error("x", id="microframe.E001").is_silenced()
    with override_settings(SILENCED_SYSTEM_CHECKS="microframe.E006"):  # malformed: ignored
        assert not issue.is_silenced()


# Reporting. -----------------------------------------------------------------------------------


class Reporter:
    """What run_and_report writes to: a command's two streams."""

    def __init__(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.stdout, self.stderr = OutputWrapper(self.out), OutputWrapper(self.err)


def test_run_and_report_clean(clean):
    command = Reporter()
    run_and_report(command, display_num_errors=True)
    assert command.out.getvalue() == "System check identified no issues (0 silenced).\n"
    assert command.err.getvalue() == ""
    run_and_report(command)
    assert command.out.getvalue().count("\n") == 1


def test_run_and_report_errors(clean):
    command = Reporter()
    with override_settings(merge=True, GRPC={"PORT": 70000}, DEBUG=True):
        with pytest.raises(SystemCheckError) as info:
            run_and_report(command, display_num_errors=True, include_deployment_checks=True)
    assert str(info.value) == (
        "SystemCheckError: System check identified some issues:\n"
        "\n"
        "ERRORS:\n"
        '?: (microframe.E006) GRPC["PORT"] must be an int in 0..65535, not 70000 (int).\n'
        f'\tHINT: Set GRPC["PORT"] to a port number in {checks.core_checks.settings_location()}; '
        "0 lets the system pick a free port.\n"
        "\n"
        "WARNINGS:\n"
        "?: (microframe.W001) DEBUG is True in deployment.\n"
        f"\tHINT: {checks.security_checks.W001.hint}\n"
        "\n"
        "INFOS:\n"
        "?: (registry.I001) The registry holds no service.\n"
        "\n"
        "System check identified 3 issues (0 silenced)."
    )
    assert command.out.getvalue() == command.err.getvalue() == ""


def test_run_and_report_fail_level(clean):
    command = Reporter()
    with override_settings(DEBUG=True):
        run_and_report(command, include_deployment_checks=True)
        assert command.err.getvalue().startswith("System check identified some issues:\n\nWARNINGS:\n")
        with pytest.raises(SystemCheckError):
            run_and_report(command, include_deployment_checks=True, fail_level=WARNING)
        run_and_report(command, include_deployment_checks=True, fail_level=CRITICAL)
        with override_settings(SILENCED_SYSTEM_CHECKS=["microframe.W001", "registry.I001"]):
            run_and_report(command, include_deployment_checks=True, fail_level=DEBUG)


# The framework. -------------------------------------------------------------------------------


def test_levels_and_messages():
    assert (DEBUG, INFO, WARNING, ERROR, CRITICAL) == (10, 20, 30, 40, 50)
    levels = [cls("m").level for cls in (Debug, Info, Warning, Error, Critical)]
    assert levels == [DEBUG, INFO, WARNING, ERROR, CRITICAL]
    message = Error("Broken.", hint="Fix it.", id="app.E001")
    assert str(message) == "?: (app.E001) Broken.\n\tHINT: Fix it."
    assert str(Warning("Odd.", obj="/pkg.Svc/M")) == "/pkg.Svc/M: Odd."
    assert message == Error("Broken.", hint="Fix it.", id="app.E001")
    assert message != Warning("Broken.", hint="Fix it.", id="app.E001")
    assert message.is_serious() and not Warning("w").is_serious()
    assert Warning("w").is_serious(WARNING)
    with pytest.raises(TypeError):
        CheckMessage("40", "not a level")  # type: ignore[arg-type]


def test_registry_forms_and_tags():
    registry = CheckRegistry()
    calls: list[str] = []

    @registry.register
    def plain(**kwargs):
        calls.append("plain")
        return [Info("plain", id="t.I001")]

    @registry.register("alpha", "beta")
    def tagged(**kwargs):
        calls.append("tagged")
        return []

    @registry.register(Tags.server, deploy=True)
    def deploy_only(**kwargs):
        calls.append("deploy")
        return [Warning("deploy", id="t.W001")]

    def direct(**kwargs):
        calls.append("direct")
        return ()

    assert registry.register(direct, "gamma") is direct
    assert tagged.tags == ("alpha", "beta") and plain.tags == () and deploy_only.tags == ("server",)

    assert [m.id for m in registry.run_checks()] == ["t.I001"]
    assert calls == ["plain", "tagged", "direct"]
    assert [m.id for m in registry.run_checks(include_deployment_checks=True)] == ["t.I001", "t.W001"]
    calls.clear()
    assert registry.run_checks(tags=["beta"]) == [] and calls == ["tagged"]
    assert registry.tags_available() == {"alpha", "beta", "gamma"}
    assert registry.tags_available(deployment_checks=True) == {"alpha", "beta", "gamma", "server"}
    assert registry.tag_exists("alpha") and not registry.tag_exists("server")
    assert registry.tag_exists("server", include_deployment_checks=True)


def test_registry_refuses_bad_checks():
    registry = CheckRegistry()
    with pytest.raises(TypeError, match="keyword arguments"):
        registry.register(lambda: [])

    @registry.register
    def returns_none(**kwargs):
        return None

    with pytest.raises(TypeError, match="did not return a list"):
        registry.run_checks()


def test_builtin_checks_are_registered():
    assert checks.registry.tags_available() >= {"settings", "middleware", "router", "server", "metrics"}
    assert checks.tag_exists("security", include_deployment_checks=True)
    assert not checks.tag_exists("security")


def test_commands_run_the_checks_first(service_dir):
    """A command requiring the checks stops before doing anything when they fail."""
    module = write_settings(service_dir, "unservable", CLEAN + f"""
    ROOT_ROUTER = "{PACKAGE}.bad_router"
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(service_dir)]))
    result = subprocess.run(
        [sys.executable, "-m", "microframe", "runserver", "127.0.0.1:0", "--noreload",
         "--settings", module],
        cwd=service_dir, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("SystemCheckError: ")
    assert "microframe.E005" in result.stderr and "Traceback" not in result.stderr
    assert "serving" not in (result.stdout + result.stderr).lower()


def test_commands_report_where_the_router_import_failed(service_dir):
    """check and runserver name the file and line of a controller's syntax error."""
    module = write_settings(service_dir, "syntax_error", CLEAN + f"""
    ROOT_ROUTER = "{PACKAGE}.syntax_router"
    """)
    where = f"{service_dir / PACKAGE / 'ctl_syntax.py'}:1"
    result = run_check(service_dir, module)
    assert result.returncode == 1
    (e010,) = reported(result.stderr, "microframe.E010")
    assert "SyntaxError: expected ':'" in e010 and where in e010, e010
    assert "microframe.E004" not in result.stderr and "Traceback" not in result.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(service_dir)]))
    for skip in ((), ("--skip-checks",)):
        served = subprocess.run(
            [sys.executable, "-m", "microframe", "runserver", "127.0.0.1:0", "--noreload",
             "--metrics-port", "0", "--settings", module, *skip],
            cwd=service_dir, env=env, capture_output=True, text=True, timeout=60,
        )
        assert served.returncode == 1, served.stdout
        assert "SyntaxError: expected ':'" in served.stderr and where in served.stderr, served.stderr
        assert "Traceback" not in served.stderr and "Set ROOT_ROUTER" not in served.stderr


@pytest.mark.parametrize(
    ("overrides", "check_id"),
    [
        ({"TRACING": []}, "tracing.E001"),
        ({"TRACING": {"BACKEND": "zipkin"}}, "tracing.E001"),
        ({"TRACING": {"SAMPLE": 1}}, "tracing.E001"),
        ({"TRACING": {"SAMPLER": {"type": "probabilistic", "param": 2}}}, "tracing.E003"),
        ({"TRACING": {"SAMPLER": {"type": "const", "param": 0.5}}}, "tracing.E003"),
        ({"TRACING": {"SAMPLER": {"type": "adaptive"}}}, "tracing.E003"),
        ({"TRACING": {"REPORTER": {"LOCAL_AGENT_HOST_PORT": "localhost"}}}, "tracing.E004"),
        ({"TRACING": {"BACKEND": "otlp", "OTLP": {"ENDPOINT": "http://collector"}}}, "tracing.E004"),
        ({"LOG": "INFO"}, "logging.E001"),
        ({"LOG": {"LEVEL": "LOUD"}}, "logging.E001"),
        ({"LOG": {"FORMAT": "xml"}}, "logging.E001"),
        ({"LOG": {"QUEUE_SIZE": 0}}, "logging.E001"),
        ({"LOG": {"ROTATE_WHEN": "weekly"}}, "logging.E001"),
        ({"LOG": {"COLOR": True}}, "logging.E001"),
        ({"LOG": {"DIR": f"{__file__}/logs"}}, "logging.W001"),  # under a file
        ({"ACCESS_LOG": {"METADATA": "all"}}, "logging.E002"),
        ({"ACCESS_LOG": {"REDACT": ["x"]}}, "logging.E002"),
        ({"LIMITER": []}, "limiter.E001"),
        ({"LIMITER": {"RATE": 5}}, "limiter.E001"),
        ({"LIMITER": {"ENABLED": "yes"}}, "limiter.E001"),
        ({"LIMITER": {"MODE": "queue"}}, "limiter.E001"),
        ({"LIMITER": {"MAX_WAIT": -1}}, "limiter.E001"),
        ({"LIMITER": {"KEY": "user"}}, "limiter.E001"),
        ({"LIMITER": {"METHODS": {"SayHello": None}}}, "limiter.E001"),
        ({"LIMITER": {"METHODS": {"/a.B/C": {"MODE": "x"}}}}, "limiter.E001"),
        ({"LIMITER": {"OPTIONS": {"rate": -5, "burst": 1}}}, "limiter.E002"),
        ({"LIMITER": {"OPTIONS": {"rate": 5, "speed": 1}}}, "limiter.E002"),
        ({"LIMITER": {"BACKEND": "no.such.Limiter"}}, "limiter.E002"),
        ({"LIMITER": {"METHODS": {"/a.B/C": {"OPTIONS": {"rate": 0}}}}}, "limiter.E002"),
        ({"LIMITER": {"BACKEND": "microframe.contrib.limiter.redis.RedisLimiter", "OPTIONS": {"rate": 5}}}, "limiter.E003"),
        ({"AUTH": []}, "auth.E001"),
        ({"AUTH": {"TOKEN": "x"}}, "auth.E001"),
        ({"AUTH": {"TOKENS": {"a": ""}}}, "auth.E001"),
        ({"AUTH": {"TOKEN_HASHES": {"a": "abc"}}}, "auth.E001"),
        ({"AUTH": {"PERMISSIONS": {"SayHello": ["a"]}}}, "auth.E001"),
        ({"AUTH": {"EXEMPT": "/a.B/C"}}, "auth.E001"),
        ({"GATEWAY": "on"}, "gateway.E001"),
        ({"GATEWAY": {"TIMOUT": 1}}, "gateway.E001"),
        ({"GATEWAY": {"TIMEOUT": 0}}, "gateway.E001"),
        ({"GATEWAY": {"MAX_BODY_BYTES": "1MB"}}, "gateway.E001"),
        ({"GATEWAY": {"ADDRESS": "nohost"}}, "gateway.E001"),
        ({"GATEWAY": {"FORWARD_HEADERS": "authorization"}}, "gateway.E001"),
        ({"PROPAGATION": 16}, "microframe.E001"),
        ({"PROPAGATION": {"MAX_KEYS": -1}}, "microframe.E001"),
        ({"PROPAGATION": {"MAX_BYTES": "4k"}}, "microframe.E001"),
        ({"PROPAGATION": {"MAX_KEY": 3}}, "microframe.E001"),
        ({"PROPAGATION": {"STRESS_KEY": "x-stress"}}, "microframe.E001"),
        ({"METRICS": {"COLORS": "canary"}}, "microframe.E001"),
        ({"METRICS": {"COLORS": ["other"]}}, "microframe.E001"),
        ({"METRICS": {"COLORS": [f"c{n}" for n in range(17)]}}, "microframe.E001"),
        ({"PROPAGATION": {"STRESS_KEY": "X-Md-Global-Stress"}}, "microframe.E001"),
        ({"PROPAGATION": {"STRESS_COLOR": ""}}, "microframe.E001"),
    ],
)
def test_tracing_and_logging_settings(clean, overrides, check_id):
    (issue,) = issues(**overrides)
    assert issue.id == check_id, issue
    assert issue.msg


@pytest.mark.parametrize(
    "overrides",
    [
        {"TRACING": {"ENABLED": True, "BACKEND": "otlp", "SAMPLER": {"type": "ratelimiting", "param": 5}}},
        {"TRACING": {"ENABLED": True, "BACKEND": "log", "SAMPLER": {"type": "const", "param": 0}}},
        {"LOG": {"LEVEL": "TRACE", "FORMAT": "json", "ROTATE_WHEN": "midnight", "DIR": None}},
        {"ACCESS_LOG": {"ENABLED": True, "METADATA": ["user-agent"], "REDACTED": ["x-token"]}},
        {"LIMITER": {"BACKEND": "microframe.contrib.limiter.backends.LeakyBucket",
                     "OPTIONS": {"rate": 10, "capacity": 20}, "MODE": "wait", "KEY": "metadata:x-tenant",
                     "METHODS": {"/a.B/C": None, "/a.B/D": {"OPTIONS": {"rate": 1, "capacity": 1}}}}},
        {"LIMITER": {"BACKEND": "microframe.contrib.limiter.redis.RedisLimiter",
                     "OPTIONS": {"rate": 5, "url": "redis://127.0.0.1:1/0"}}},
    ],
)
def test_accepted_tracing_and_logging_settings(clean, overrides):
    assert issues(**overrides) == []


def test_deploy_warns_when_every_request_is_traced(clean):
    assert "tracing.W001" in ids(deploy=True, TRACING={"ENABLED": True, "SAMPLER": {"type": "const", "param": 1}})
    assert "tracing.W001" not in ids(deploy=True, TRACING={"ENABLED": True, "SAMPLER": {"type": "probabilistic", "param": 0.01}})
