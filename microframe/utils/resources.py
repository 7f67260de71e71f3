"""Process resources a server raises for itself at start-up."""

from __future__ import annotations

import logging

logger = logging.getLogger("microframe.server")


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise this process's soft limit of open files to its hard limit; return (old, new).

    Every connection costs a file descriptor; the usual soft limit (1,024) lets a thousand idle
    connections stop a server from accepting any more, and from opening the files its
    batteries need (the registry's heartbeat, the log files). The hard limit is what the
    administrator allows (systemd's ``LimitNOFILE``, Docker's ``--ulimit``). Return None when
    nothing changed (already at the hard limit, or no ``resource`` module).
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as err:
        logger.warning("cannot raise the open files limit from %d to %d: %s", soft, target, err)
        return None
    logger.info("open files limit raised from %d to %d (the hard limit)", soft, target)
    return soft, target


#: Descriptors kept for the process's own files (logs, the registry, metrics, etcd, Redis)
#: when connections are capped by the open files limit.
RESERVED_FILES = 128


def open_files_limit() -> int | None:
    """Return this process's soft limit of open files, or None when it has none."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connections_within_files_limit(wanted: int) -> int:
    """Return ``wanted``, or fewer when the open files limit would run out before it: every
    connection is a descriptor, and the process keeps :data:`RESERVED_FILES` for itself."""
    limit = open_files_limit()
    if limit is None:
        return wanted
    return max(1, min(wanted, limit - RESERVED_FILES))
