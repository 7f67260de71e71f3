"""Settings of the service the tests run as a real process."""

SERVICE_NAME = "testservice"
ROOT_ROUTER = "testservice.router"

GRPC = {
    "HOST": "127.0.0.1",
    "PORT": 0,
    "MAX_MESSAGE_BYTES": 64 * 1024,
    "MAX_CONCURRENT_RPCS": 200,
    "GRACE": 5.0,
}

METRICS = {"ENABLED": True, "HOST": "127.0.0.1", "PORT": 0, "LABELS": {"env": "test", "idc": "lab"}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"microframe": {"level": "INFO"}},
}

GREETING = "Hello"
LIMITS = {"a": 1, "nested": {"x": 1, "y": 2}}

# Console only (the tests read the server's output); tests of the log file set their own DIR.
LOG = {"DIR": None}
