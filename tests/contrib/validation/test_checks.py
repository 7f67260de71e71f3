"""The validation checks, as ``check`` reports them for a service: rules without the
middleware, rules that need protovalidate when it is not installed, a CEL expression that does
not compile (with its proto file and field), bad VALIDATION settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.env import ROOT

pytestmark = pytest.mark.timeout(120)

PROTO = """
syntax = "proto3";
package ruled;
import "buf/validate/validate.proto";
service Ruled {
  rpc Plain (Named) returns (Named);
  rpc Coded (Celled) returns (Named);
}
message Named {
  string name = 1 [(buf.validate.field).string.min_len = 1];
}
message Celled {
  string code = 1 [(buf.validate.field).cel = {id: "code.upper", message: "m", expression: "EXPRESSION"}];
}
"""

ROUTER = """
from microframe.core.router import rpc
from ruledsvc.generate import ruled_pb2

async def plain(ctx, request):
    return request

async def celled(ctx, request):
    return ruled_pb2.Named(name=request.code)

Ruled = ruled_pb2.DESCRIPTOR.services_by_name["Ruled"]
routes = [rpc(Ruled, "Plain", plain), rpc(Ruled, "Coded", celled)]
"""


def _service(tmp_path: Path, expression: str = "this.startsWith('X')") -> Path:
    package = tmp_path / "ruledsvc"
    (package / "idl").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "idl" / "ruled.proto").write_text(PROTO.replace("EXPRESSION", expression))
    (package / "router.py").write_text(textwrap.dedent(ROUTER))
    done = subprocess.run(
        [sys.executable, "-m", "microframe", "genproto", "--idl", str(package / "idl"),
         "--out", str(package / "generate")],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path


def _settings(service: Path, name: str, extra: str = "") -> str:
    (service / "ruledsvc" / f"{name}.py").write_text(textwrap.dedent("""
        SERVICE_NAME = "ruled"
        ROOT_ROUTER = "ruledsvc.router"
        GRPC = {"HOST": "127.0.0.1", "PORT": 50051}
    """) + textwrap.dedent(extra))
    return f"ruledsvc.{name}"


def _env(service: Path, *first: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_")}
    env["PYTHONPATH"] = os.pathsep.join([*first, str(service), str(ROOT)])
    return env


def _check(service: Path, settings: str, *first: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "microframe", "check", "--settings", settings, "--tag", "validation"],
        cwd=service, env=_env(service, *first), capture_output=True, text=True, timeout=60,
    )


def _reported(run: subprocess.CompletedProcess[str], check_id: str) -> list[str]:
    output = run.stdout + run.stderr
    return re.findall(rf"\({re.escape(check_id)}\) (.*)$", output, flags=re.MULTILINE)


def test_clean_service_with_rules(tmp_path):
    service = _service(tmp_path)
    run = _check(service, _settings(service, "clean"))
    assert run.returncode == 0, run.stdout + run.stderr
    # The CEL rule is protovalidate's: said, with its cost.
    (info,) = _reported(run, "validation.I001")
    assert "ruled.Celled (CEL expressions)" in info and "ruled.Named" not in info


def test_rules_without_the_middleware(tmp_path):
    service = _service(tmp_path)
    settings = _settings(service, "nomw", 'MIDDLEWARE = ["microframe.contrib.metrics.middleware.MetricsMiddleware"]\n')
    run = _check(service, settings)
    (warning,) = _reported(run, "validation.W001")
    assert "ruled.Named" in warning and "ValidationMiddleware is not in MIDDLEWARE" in warning


def test_a_cel_expression_that_does_not_compile_is_reported_with_its_file_and_field(tmp_path):
    service = _service(tmp_path, expression="this.size( > 3")
    run = _check(service, _settings(service, "badcel"))
    assert run.returncode != 0
    (error,) = _reported(run, "validation.E003")
    assert error.startswith("ruled.proto: ruled.Celled.code: rule 'code.upper' does not compile:"), error
    assert "this.size( > 3" in error


def test_an_unknown_function_is_reported_with_its_file_and_field(tmp_path):
    service = _service(tmp_path, expression="this == this.noSuchFunction()")
    run = _check(service, _settings(service, "unknownfn"))
    assert run.returncode != 0
    (error,) = _reported(run, "validation.E003")
    assert error.startswith("ruled.proto: ruled.Celled.code: rule 'code.upper' does not compile: "
                            "'noSuchFunction' is not a function"), error


def test_rules_that_need_protovalidate_when_it_is_not_installed(tmp_path):
    service = _service(tmp_path)
    # A protovalidate that cannot be imported, first on the path: as if the extra were missing.
    shadow = tmp_path / "shadow" / "protovalidate"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named protovalidate')\n")
    run = _check(service, _settings(service, "noextra"), str(tmp_path / "shadow"))
    assert run.returncode != 0
    (error,) = _reported(run, "validation.E002")
    assert "ruled.Celled" in error and "protovalidate, which is not installed" in error
    assert 'pip install "microframe-grpc[validate]"' in run.stdout + run.stderr
    assert not _reported(run, "validation.E003")


def test_bad_validation_settings(tmp_path):
    service = _service(tmp_path)
    run = _check(service, _settings(service, "badsettings", 'VALIDATION = {"RESPONSES": "yes", "STRICT": 1}\n'))
    assert run.returncode != 0
    errors = _reported(run, "validation.E001")
    assert any("STRICT" in e for e in errors) and any("RESPONSES" in e for e in errors), errors


def test_the_orders_services_generated_code_is_current():
    """tests/orders/generate is what genproto makes of its idl/ today."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "genproto", "--check", "--idl", "idl",
         "--out", "generate"],
        cwd=ROOT / "tests" / "orders", env=_env(ROOT), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compiled_rules_never_load_protovalidate():
    # The example's rules are all compiled: its checks and validators leave protovalidate (and
    # its CEL interpreter, ~11 MB of a server's memory) unimported.
    code = textwrap.dedent("""
        import sys
        import microframe
        microframe.setup()
        from microframe.core.checks.registry import registry
        from microframe.contrib.validation.rules import validator_for
        from example.generate import hello_pb2
        registry.run_checks()
        validator = validator_for(hello_pb2.HelloRequest.DESCRIPTOR)
        assert validator is not None
        print("protovalidate" in sys.modules, "celpy" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_")}
    env.update(PYTHONPATH=str(ROOT), MICROFRAME_SETTINGS_MODULE="example.settings")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
