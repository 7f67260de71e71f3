"""Compile idl/ into generate/ and app/router.py with genproto, so the service runs at once."""

import io
import sys
from pathlib import Path

root = Path.cwd()
try:
    from microframe.management.commands.genproto import Command
except ImportError:
    sys.stderr.write(
        "microframe is not installed in this environment: generate/ and app/router.py are "
        "missing. Run `python manage.py genproto` in the service once it is.\n"
    )
else:
    Command(stdout=io.StringIO()).execute(
        idl=str(root / "idl"), out=str(root / "generate"), package="{{ cookiecutter.python_package }}",
        check=False, skip_checks=True,
    )
