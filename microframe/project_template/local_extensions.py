"""Jinja filters of the template: ``snake`` names a controller module as genproto does;
``service_port`` gives a new service its own gRPC port as ``startservice`` does."""

from cookiecutter.utils import simple_filter

try:
    from microframe.utils.names import snake as _snake
    from microframe.management.commands.startservice import service_ports
except ImportError:  # cookiecutter run from an environment without microframe
    import re
    import zlib

    def _snake(name: str) -> str:
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()

    def service_ports(name: str) -> tuple[int, int]:
        port = 20000 + 2 * (zlib.crc32(name.encode()) % 5000)
        return port, port + 1


@simple_filter
def snake(value: str) -> str:
    return _snake(value)


@simple_filter
def service_port(value: str) -> int:
    return service_ports(value)[0]
