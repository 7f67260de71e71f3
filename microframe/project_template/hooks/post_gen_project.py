"""Compile idl/ into generate/ and app/router.py with genproto, so the service runs at once.

First remove the bytecode copied with the template: pip compiles the installed template's
modules, and cookiecutter copies every file, ``__pycache__`` included.
"""

import io
import shutil
import sys
from pathlib import Path

root = Path.cwd()
for cache in list(root.rglob("__pycache__")):
    shutil.rmtree(cache, ignore_errors=True)
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
