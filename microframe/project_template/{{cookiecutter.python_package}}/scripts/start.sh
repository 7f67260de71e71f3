#!/bin/sh
# Start the {{ cookiecutter.service_name }} service in production: the conf/product overlay, no reloader, one
# worker per core (WORKERS to change it). SIGTERM stops it gracefully: deregistered, health
# NOT_SERVING, in-flight calls drained. runserver runs the system checks before serving.
set -e
cd "$(dirname "$0")/.."
export MICROFRAME_ENV="${MICROFRAME_ENV:-product}"
WORKERS="${WORKERS:-$(nproc 2>/dev/null || echo 1)}"
exec python manage.py runserver --noreload --workers "$WORKERS" "$@"
