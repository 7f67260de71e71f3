"""Jinja filters of the template: ``snake`` names a controller module as genproto does."""

from cookiecutter.utils import simple_filter

try:
    from microframe.management.commands.genproto import snake as _snake
except ImportError:  # cookiecutter run from an environment without microframe
    import re

    def _snake(name: str) -> str:
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


@simple_filter
def snake(value: str) -> str:
    return _snake(value)
