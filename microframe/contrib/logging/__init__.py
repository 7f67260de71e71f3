"""The logging battery: levels, request fields, text and JSON formats, a non-blocking writer.

- :mod:`.levels`: the ``TRACE`` level (between DEBUG and INFO);
- :mod:`.filters`: every record gets the trace id, service and method of the request it was
  written for;
- :mod:`.formatters`: the text and JSON line formats;
- :mod:`.handlers`: the queue handler that hands records to a writer thread and never blocks;
- :mod:`.config`: the default ``LOGGING`` configuration, built from the ``LOG`` setting;
- :mod:`.middleware`: the access log, a line per call.
"""

from microframe.contrib.logging.levels import TRACE, trace

__all__ = ["TRACE", "trace"]
