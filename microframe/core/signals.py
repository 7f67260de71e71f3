"""Signals the framework sends, and what batteries connect to them.

A receiver is ``def receiver(sender, **kwargs)``, or ``async def`` for the server's and the
pool's signals, which are awaited (:meth:`~microframe.utils.signals.Signal.asend`): a receiver
of those that raises is logged and never stops the others; so is one of ``serving_stopped``
(``send_robust``). ``serving_starting`` and ``setting_changed`` are sent with ``send``: what a
receiver raises propagates. Connect receivers in a battery's ``ready()``.

Settings

- ``setting_changed(sender, setting, value, enter)``: sent by ``override_settings``, and by
  the configuration center when it applies a stored change (:mod:`microframe.contrib.config`),
  so that batteries caching a setting rebuild or reset what they derived from it; a receiver
  that raises refuses the configuration center's change.

Every server (:class:`~microframe.core.server.Server`: runserver's, a test's)

- ``server_started(sender, server, address)``: it serves and health says SERVING;
- ``server_stopping(sender, server)``: health says NOT_SERVING, before the drain;
- ``server_stopped(sender, server)``: the calls in flight have drained (or the grace period is
  over); the tracing battery flushes its tracer on it.

``server.process`` is the :class:`~microframe.core.serving.ServingProcess` of runserver, or
None for a server a program or a test starts itself: the registry battery registers only a
server whose ``process.role`` is ``"server"`` (one process serving the service alone).

The process runserver starts (``role`` ``"server"``, ``"supervisor"`` or ``"worker"``)

- ``serving_starting(sender, process)``: before anything binds, sent synchronously; what a
  receiver raises stops runserver (the metrics battery starts its endpoint here, and a port in
  use is an error); a receiver adds what it serves to ``process.endpoints``;
- ``serving_stopped(sender, process)``: the process is about to exit.

The pool of ``runserver --workers N`` (sent by the supervisor, ``pool.process`` its process)

- ``pool_started(sender, pool)``: the workers are started (the registry battery waits until
  they serve, then registers the pool's address once); cancelled if the pool stops first;
- ``pool_stopping(sender, pool)``: SIGTERM arrived, before the workers are told to drain;
- ``pool_stopped(sender, pool)``: every worker has exited;
- ``worker_exited(sender, pool, pid)``: a worker exited (the metrics battery drops its
  multiprocess files' live gauges).
"""

from microframe.utils.signals import Signal

setting_changed = Signal("setting_changed")
server_started = Signal("server_started")
server_stopping = Signal("server_stopping")
server_stopped = Signal("server_stopped")
serving_starting = Signal("serving_starting")
serving_stopped = Signal("serving_stopped")
pool_started = Signal("pool_started")
pool_stopping = Signal("pool_stopping")
pool_stopped = Signal("pool_stopped")
worker_exited = Signal("worker_exited")
