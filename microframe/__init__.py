"""microframe: a batteries-included, Django-style framework for gRPC microservices."""

from microframe.core.exceptions import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    RpcError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)

__version__ = "0.1.0"

VERSION = tuple(int(part) for part in __version__.split("."))

__all__ = [
    "__version__",
    "VERSION",
    "RpcError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
]


def setup() -> None:
    """Configure logging (``LOGGING_SETUP``) and set the batteries up; call once before serving.

    Commands that serve do. The batteries' ``ready()`` runs once per process, however often
    this is called.
    """
    from microframe.batteries import setup_batteries
    from microframe.conf import settings
    from microframe.utils.module_loading import import_string

    if settings.LOGGING_SETUP:
        import_string(settings.LOGGING_SETUP)()
    setup_batteries()
