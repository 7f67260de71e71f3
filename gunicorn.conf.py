"""gunicorn's settings for the example's HTTP/JSON gateway (``gunicorn example.wsgi`` from here)."""

import os

# The worker class and limits that keep idle, slow and non-reading clients from blocking the
# others: see docs/topics/security.md.
from microframe.contrib.gateway.gunicorn_conf import *  # noqa: F403

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
accesslog = "-"
