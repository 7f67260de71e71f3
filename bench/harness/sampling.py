"""Reading the processes under test from /proc: memory, children, listening sockets, CPU.

The CPU figures of a measurement come from here, and so does the CPU other programs used
meanwhile (``CpuWindow``): on a shared machine it tells a disturbed measurement from a clean
one, and ``wait_quiet`` waits for the machine to calm down before measuring.
"""

from __future__ import annotations

import os
import resource
import time


def vm_rss_kb(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB (None once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (the workers of a supervisor), sorted."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, split after the last ")".
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def listen_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def holds_listener(pid: int, inodes: set[str]) -> bool:
    """Whether ``pid`` has one of the sockets ``inodes`` open: it serves the port."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def uses_uvloop(pid: int) -> bool:
    """Whether ``pid`` has uvloop loaded: its event loop is uvloop's."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("uvloop" in line for line in f)
    except OSError:
        return False


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system, every thread) ``pid`` has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def machine_cpu() -> tuple[float, float]:
    """Seconds of CPU the whole machine has used (user + nice + system) and had stolen."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / CLOCK_TICK, fields[7] / CLOCK_TICK


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (h2load, nghttp)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """CPU used during a window: by the server processes, and by everything else.

    "Other" is the machine's user + system time minus the server's, h2load's (the children
    reaped in the window) and this runner's: other programs sharing the machine, plus the
    time the hypervisor stole. It tells a disturbed measurement from a clean one.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = time.monotonic()
        self.per_process0 = [process_cpu(p) for p in pids]
        self.server0 = sum(self.per_process0)
        self.machine0, self.steal0 = machine_cpu()
        self.children0 = children_cpu()
        self.own0 = time.process_time()

    def close(self) -> tuple[float, float, float, float]:
        """Return the server's CPU seconds, and the cores used by the server, by the load
        generator (the children reaped meanwhile) and by other programs, since the window opened.
        """
        wall = max(time.monotonic() - self.start, 1e-6)
        per_process = [process_cpu(p) for p in self.pids]
        self.per_process_cores = [
            (b - a) / wall for a, b in zip(self.per_process0, per_process, strict=True)
        ]
        server = sum(per_process) - self.server0
        machine, steal = machine_cpu()
        loadgen = children_cpu() - self.children0
        ours = server + loadgen + (time.process_time() - self.own0)
        other = max(0.0, machine - self.machine0 - ours) + (steal - self.steal0)
        return server, server / wall, loadgen / wall, other / wall


def wait_quiet(max_wait: float, threshold: float) -> float:
    """Wait (up to ``max_wait`` s) until the machine's other load is under ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    while True:
        window = CpuWindow([])
        time.sleep(0.5)
        other = window.close()[3]
        if other <= threshold or time.monotonic() >= deadline:
            return other
        time.sleep(0.5)
