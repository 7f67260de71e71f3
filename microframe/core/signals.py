"""Signals the framework sends.

- ``setting_changed(sender, setting, value, enter)``: sent by ``override_settings`` so that
  batteries caching a setting reset themselves.
- ``server_started(sender, server, address)`` / ``server_stopping(sender, server)``: the server
  runtime's life cycle; the registry battery registers and deregisters on them.
- ``server_stopped(sender, server)``: sent once the in-flight calls have drained (or the grace
  period is over); the tracing battery flushes and closes its tracer on it.
"""

from microframe.utils.signals import Signal

setting_changed = Signal("setting_changed")
server_started = Signal("server_started")
server_stopping = Signal("server_stopping")
server_stopped = Signal("server_stopped")
