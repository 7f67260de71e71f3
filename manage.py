#!/usr/bin/env python
"""Run management commands for the example service (``python manage.py runserver``)."""

import os
import sys


def main() -> None:
    os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "example.settings")
    try:
        from microframe.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import microframe. Is it installed (pip install -e .) and is the "
            "virtual environment active?"
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
