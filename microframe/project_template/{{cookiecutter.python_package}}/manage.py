#!/usr/bin/env python
"""Run the management commands of the {{ cookiecutter.service_name }} service: ``python manage.py runserver``."""

import os
import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).resolve().parent
    # The service is the package `{{ cookiecutter.python_package }}`: import it from the directory above, and never
    # its own modules (controller, generate, tests...) as top-level names.
    if sys.path and Path(sys.path[0] or ".").resolve() == here:
        sys.path[0] = str(here.parent)
    else:
        sys.path.insert(0, str(here.parent))
    os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "{{ cookiecutter.python_package }}.settings")
    try:
        from microframe.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import microframe. Is it installed (pip install -r requirements.txt) and is "
            "the virtual environment active?"
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
