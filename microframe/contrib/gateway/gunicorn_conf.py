"""gunicorn settings that keep the gateway serving under hostile connections.

A service's ``gunicorn.conf.py`` (and the repository's own, for ``gunicorn example.wsgi``)
starts with ``from microframe.contrib.gateway.gunicorn_conf import *`` and sets its bind
address and workers after it; any of these can be overridden there or on the command line.
See docs/topics/security.md for what each protects against.
"""

# Requests are read on an event loop with time limits, the application runs in threads
# (microframe.contrib.gateway.worker): idle and slow connections, and clients that do not read
# a stream, cost a few kilobytes each instead of a thread or a process.
worker_class = "microframe.contrib.gateway.worker.GatewayWorker"
# Threads running the application per worker (each call waits on the service meanwhile).
threads = 32
# Connections one worker keeps open at once; more are closed as they arrive.
worker_connections = 10000
# Seconds an idle kept-alive connection stays open.
keepalive = 5
# Seconds the arbiter waits for a worker's heartbeat before replacing it.
timeout = 30
# Seconds a stopping worker lets its requests finish.
graceful_timeout = 10
# The kernel's queue of connections not yet accepted.
backlog = 2048
