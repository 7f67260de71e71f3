"""microframe as a user gets it: the distribution ``microframe-grpc`` built with ``python -m
build``, installed in a clean virtual environment (no checkout anywhere on its path), makes a
service that installs its own requirements, passes ``genproto --check``, ``check`` and its own
tests, and starts as its Dockerfile starts it (``scripts/start.sh``, the product overlay, etcd).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import venv
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import grpc
import pytest

import microframe
from microframe.test.ports import free_port

from support.env import ROOT
from support.etcd_cluster import EtcdCluster
from support.polling import wait_until

pytestmark = pytest.mark.timeout(900)

VERSION = microframe.__version__
WHEEL = f"microframe_grpc-{VERSION}-py3-none-any.whl"
SDIST = f"microframe_grpc-{VERSION}.tar.gz"
#: What a service made by startservice needs from the distribution, besides the Python code.
TEMPLATE_FILES = [
    "cookiecutter.json", "local_extensions.py", "hooks/pre_gen_project.py",
    "hooks/post_gen_project.py", "{{cookiecutter.python_package}}/.dockerignore",
    "{{cookiecutter.python_package}}/.gitignore", "{{cookiecutter.python_package}}/Dockerfile",
    "{{cookiecutter.python_package}}/requirements.txt",
    "{{cookiecutter.python_package}}/scripts/start.sh",
    "{{cookiecutter.python_package}}/idl/{{cookiecutter.python_package}}.proto",
]


def _run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _tracked_copy(destination: Path) -> Path:
    """Copy the files git tracks (what a release is made of, nothing of a working tree's
    leftovers: egg-info, caches, a built site) to ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source, target = ROOT / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    return destination


def _user_env(venv_dir: Path) -> dict[str, str]:
    """A user's shell with the virtual environment active: nothing of the test suite's path."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("MICROFRAME_", "PYTHON", "PYTEST", "VIRTUAL_ENV"))
    }
    env.update(
        PATH=f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv_dir),
        PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built as a release is: ``python -m build`` (the wheel is built
    from the sdist, so the sdist must carry everything too)."""
    try:
        import build  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the build package is required under CI (the dev extra installs it)")
        pytest.skip("the build package is not installed (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("release")
    source = _tracked_copy(tmp / "source")
    out = tmp / "dist"
    _run([sys.executable, "-m", "build", "--outdir", out, source], cwd=tmp, env=dict(os.environ))
    assert sorted(p.name for p in out.iterdir()) == [WHEEL, SDIST]
    return out


def _clean_venv(venv_dir: Path) -> dict[str, str]:
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(venv_dir)
    return _user_env(venv_dir)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory, dist: Path) -> tuple[Path, dict[str, str]]:
    """A developer's clean virtual environment where ``pip install microframe-grpc`` found the
    wheel (its dependencies from the index), and a working directory outside any checkout."""
    home = tmp_path_factory.mktemp("user")
    env = _clean_venv(home / "venv")
    _run(["pip", "install", "-q", "--find-links", dist, "microframe-grpc"], home, env, 600)
    return home, env


def _record_hash(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        record = archive.read(f"microframe_grpc-{VERSION}.dist-info/RECORD").decode()
    return next(line.split(",")[1] for line in record.splitlines() if line.startswith(name + ","))


def test_the_wheel_and_the_sdist_carry_the_template_the_types_and_no_bytecode(dist: Path) -> None:
    with zipfile.ZipFile(dist / WHEEL) as archive:
        wheel = set(archive.namelist())
        metadata = archive.read(f"microframe_grpc-{VERSION}.dist-info/METADATA").decode()
        entry_points = archive.read(f"microframe_grpc-{VERSION}.dist-info/entry_points.txt").decode()
    with tarfile.open(dist / SDIST) as archive:
        sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for names in (wheel, sdist):
        missing = [f for f in TEMPLATE_FILES if f"microframe/project_template/{f}" not in names]
        assert not missing, missing
        assert "microframe/py.typed" in names
        assert not [n for n in names if n.endswith((".pyc", ".pyo")) or "__pycache__" in n]
    assert "Name: microframe-grpc\n" in metadata and f"Version: {VERSION}\n" in metadata
    assert "microframe-admin = microframe.management:execute_from_command_line" in entry_points
    # Only the framework: not the example, the tests or the benchmarks of the repository; and
    # protovalidate's rules (buf/validate), which genproto compiles against and protovalidate
    # imports.
    assert {n.split("/")[0] for n in wheel} == {"microframe", "buf", f"microframe_grpc-{VERSION}.dist-info"}
    for name in ("validate.proto", "validate_pb2.py", "validate_pb2.pyi", "NOTICE"):
        assert f"buf/validate/{name}" in wheel and f"buf/validate/{name}" in sdist, name


def test_the_environment_imports_the_installed_wheel_not_a_checkout(user: tuple[Path, dict[str, str]], dist: Path) -> None:
    home, env = user
    shown = json.loads(_run(["python", "-c", (
        "import json, sys, microframe, importlib.metadata as m; "
        "print(json.dumps({'file': microframe.__file__, 'path': sys.path, "
        "'version': m.version('microframe-grpc')}))"
    )], home, env))
    venv_dir = Path(env["VIRTUAL_ENV"])
    assert Path(shown["file"]).is_relative_to(venv_dir), shown
    assert shown["version"] == VERSION
    assert not [p for p in shown["path"] if p and Path(p).resolve().is_relative_to(ROOT)], shown
    installed = Path(shown["file"]).read_bytes()
    digest = "sha256=" + urlsafe_b64encode(hashlib.sha256(installed).digest()).rstrip(b"=").decode()
    assert digest == _record_hash(dist / WHEEL, "microframe/__init__.py")


def test_a_service_made_from_the_wheel_installs_tests_and_starts_as_its_dockerfile_does(
    user: tuple[Path, dict[str, str]], dist: Path
) -> None:
    home, env = user
    made = _run(["microframe-admin", "startservice", "shop"], home, env)
    service = home / "shop"
    assert f"Created the service 'shop' in {service}" in made
    requirements = (service / "requirements.txt").read_text()
    assert f"microframe-grpc[etcd,tracing,gateway,validate]=={VERSION}" in requirements
    # Nothing compiled from the installed template (pip compiles it) came along.
    assert not list(service.rglob("*.pyc")), list(service.rglob("*.pyc"))

    # The developer: the service's development requirements, check, its own tests.
    _run(["pip", "install", "-q", "--find-links", dist, "-r", "requirements-dev.txt"], service, env, 600)
    assert "no issues" in _run(["python", "manage.py", "check"], service, env)
    assert "no issues" in _run(["python", "manage.py", "check"], service, {**env, "MICROFRAME_ENV": "product"})
    tested = _run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], service, env)
    assert re.search(r"\b3 passed\b", tested), tested

    # The image, as the Dockerfile builds it: a Python with nothing installed, then
    # `pip install -r requirements.txt` (the wheel directory standing in for the index: the pin
    # must find the wheel) and `genproto --check`.
    image = _clean_venv(home / "image")
    _run(["pip", "install", "-q", "--find-links", dist, "-r", "requirements.txt"], service, image, 600)
    shown = _run(["python", "-c", "import microframe; print(microframe.__file__)"], service, image)
    assert Path(shown.strip()).is_relative_to(home / "image"), shown
    _run(["python", "manage.py", "genproto", "--check"], service, image)
    env = image

    # CMD ["sh", "scripts/start.sh"]: the product overlay, registered in etcd; the site's own
    # overlay (a file the deployment adds to conf/product/) names this etcd and free ports.
    etcd = EtcdCluster(1).start()
    port, metrics_port = free_port(), free_port()
    (service / "conf" / "product" / "zz-site.yaml").write_text(
        f"GRPC: {{PORT: {port}}}\nMETRICS: {{PORT: {metrics_port}}}\n"
        f"REGISTRY: {{OPTIONS: {{endpoints: {json.dumps(etcd.endpoints)}}}}}\n"
    )
    product = {**env, "WORKERS": "2"}
    log = service / "start.log"
    with open(log, "wb") as out:
        started = subprocess.Popen(
            ["sh", "scripts/start.sh"], cwd=service, env=product, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def serving() -> bool:
            """The Dockerfile's HEALTHCHECK."""
            assert started.poll() is None, log.read_text()
            answer = subprocess.run([
                "python", "manage.py", "call", "grpc.health.v1.Health/Check",
                "--address", f"127.0.0.1:{port}", "--timeout", "2",
            ], cwd=service, env=env, capture_output=True, text=True, timeout=30)
            return answer.returncode == 0 and '"SERVING"' in answer.stdout

        wait_until(serving, 60, "the service started by scripts/start.sh to serve")

        def registered() -> bool:
            """Serving comes first: a pool's supervisor registers it once its workers serve."""
            listed = subprocess.run(
                ["python", "manage.py", "register", "--list", "shop"], cwd=service,
                env={**env, "MICROFRAME_ENV": "product"}, capture_output=True, text=True,
                timeout=30,
            )
            return listed.returncode == 0 and "No instance of 'shop'" not in listed.stdout

        wait_until(registered, 30, "the pool to be registered in etcd")
        # Found through etcd, as its callers find it.
        called = _run([
            "python", "manage.py", "call", "shop.Shop/SayHello", '{"name": "Ada"}', "--compact",
        ], service, {**env, "MICROFRAME_ENV": "product"})
        assert json.loads(called) == {"message": "Hello, Ada!"}
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary("/shop.Shop/SayHello")(b"\x0a\x02Bo", timeout=5) == b"\x0a\x0aHello, Bo!"
        started.send_signal(signal.SIGTERM)
        assert started.wait(60) == 0, log.read_text()
        listed = _run(["python", "manage.py", "register", "--list", "shop"], service,
                      {**env, "MICROFRAME_ENV": "product"})
        assert "No instance of 'shop'" in listed, listed
    finally:
        if started.poll() is None:
            os.killpg(started.pid, signal.SIGKILL)
            started.wait(10)
        etcd.close()

