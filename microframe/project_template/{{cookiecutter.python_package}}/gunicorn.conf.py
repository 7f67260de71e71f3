"""gunicorn's settings for the HTTP/JSON gateway (``gunicorn {{ cookiecutter.python_package }}.wsgi``)."""

import multiprocessing
import os
from pathlib import Path

# The worker class and limits that keep idle, slow and non-reading clients from blocking the
# others (worker_class, threads, worker_connections, keepalive, timeout...): see
# docs/topics/security.md. Override any of them below.
from microframe.contrib.gateway.gunicorn_conf import *  # noqa: F403

# The service is the package `{{ cookiecutter.python_package }}`: import it from the directory above this one.
pythonpath = str(Path(__file__).resolve().parent.parent)
bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GATEWAY_WORKERS", min(4, multiprocessing.cpu_count())))
accesslog = "-"
