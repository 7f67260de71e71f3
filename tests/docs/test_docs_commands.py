"""The command samples of README.md and docs/ print what the commands really print.

A *command sample* is a ```sh block directly followed (blank lines aside) by a ```text block,
which shows what the commands of the sh block print. For each page with samples, this test does
what a reader of the page does, in the page's order: it runs every sample's commands and
compares what they print with what the page shows. A text block may not start with a
``$ command`` line: such a sample is written as a sh block and its text block.

Output that is not checked is marked: within a section (from a heading to the next), every text
block that comes after a sh block, whatever lies between (prose, other blocks), must be a
sample's output (right after its sh block) or be marked ``<!-- not-run: REASON -->``; the
structure test flags the others (``unrun_outputs``). Text blocks of a section with no sh block
before them (diagrams, trees, synopses) are free; a log excerpt of a service that the page does
not run (production, a crash) is marked too, so that what it claims to be is said.

Where the commands run:

- in a fresh directory per page: a copy of the repository's example service (``example/``,
  ``manage.py``, ``gunicorn.conf.py``, and ``tests/testservice/`` for settings.md), which the
  docs show as ``/home/me/microframe``; or, for the pages of ``HOME_PAGES``, which start from a
  service made by ``startservice``, an empty home shown as ``/home/me`` (with the commands that
  the page takes as done first). The copy's path is as long as ``/home/me/microframe``:
  diffsettings' pretty-printer wraps a value by the length of its text, paths included;
- in a network namespace of their own (``unshare --net``), so that they use the documented ports
  (50051, 9464...) as they are, without meeting other tests' servers or the developer's;
- with ``python``, ``microframe-admin`` and ``gunicorn`` of the interpreter running the tests,
  this checkout's microframe (``PYTHONPATH``), and a registry directory and ``HOME`` of the test.

How:

- the lines of a sample run one by one with bash (``#`` comment lines aside); ``cd DIR`` changes
  the directory of the page's next commands. A command whose output does not end with a
  newline leaves its last line to the next command's, as in a terminal;
- a command that serves (``manage.py runserver``, ``gunicorn``) starts in the background: the
  lines shown must be its first lines (within ``SERVE_TIMEOUT``), and it goes on serving for the
  page's next samples, until the page ends or a ``<!-- stop-servers -->`` marker (CONTROL-C,
  then SIGKILL after ``STOP_TIMEOUT``). When it exits at once, everything it printed is compared;
- before every step, the test waits (within ``SERVE_TIMEOUT``) for the servers that reload on code
  changes (``DEBUG``) to have restarted after the last change of a file they watch, as a reader
  waits for the reload.

Markers: HTML comments (the site does not show them) on the lines right before a block; a
comment right before a block that is none of these is refused (a misspelt marker):

- ``<!-- not-run: REASON -->``: before a sample, the sample is not run; for the few that need
  what this test has not (etcd...); before a text block that is no sample's output, the text is
  shown as not run, for REASON (a production log, what a server prints after a file changed);
- ``<!-- write-file: PATH -->``, ``<!-- append-file: PATH -->``: the next code block is written
  to, or appended to, PATH (from the current directory), as the page tells the reader to do;
- ``<!-- stop-servers -->``: the servers started so far are stopped, as the page tells the reader.

Comparison: the lines shown are the lines the commands wrote to their standard output and error,
each stream in its order, interleaved as a terminal may show them (a server's log lines come from
a writer thread, so they have no fixed place among its stdout lines). A shown line ``...`` stands
for any number of lines. Trailing blanks are ignored, and on both sides ``NORMALISE`` replaces what
changes from run to run (times, pids, durations) and the port numbers, where they are written as
ports (``NORMALISE_PORTS``: after the host of an address or a URL, ``127.0.0.1:50051``,
``[::1]:50051``, ``localhost:8000``, ``etcd.internal:2379``, ``http://127.0.0.1:9464/metrics``,
and in ``gRPC on port N, metrics on M``; not a file's line number, ``router.py:4``, nor any other
number); in what the commands print, the directory of the run is replaced with the one the docs
show.
"""

from __future__ import annotations

import functools
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from support.env import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

# What the docs show as the directory of the run.
REPO_SHOWN = "/home/me/microframe"
HOME_SHOWN = "/home/me"
# The repository files the example service's pages need, copied to the directory of the run.
REPO_FILES = ["example", "manage.py", "gunicorn.conf.py", "tests/testservice"]

# Pages that run in an empty home (shown as /home/me) instead of a copy of the repository, with
# the commands (and, for those that serve, a line that says they are ready) that come before.
HOME_PAGES: dict[str, list[tuple[str, str | None]]] = {
    "intro/new-service.md": [],
    # "The orders service made by startservice", in its directory.
    "howto/battery.md": [("microframe-admin startservice orders", None), ("cd orders", None)],
    # "The orders service made by startservice, in its directory, with an etcd member on
    # 127.0.0.1:2379".
    "topics/config.md": [
        ("microframe-admin startservice orders", None),
        ("cd orders", None),
        ("etcd --data-dir ../etcd.data --listen-client-urls http://127.0.0.1:2379 "
         "--advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380",
         "ready to serve client requests"),
    ],
    # "From the service's directory, with runserver serving", gunicorn started.
    "topics/gateway.md": [
        ("microframe-admin startservice orders", None),
        ("cd orders", None),
        ("python manage.py runserver --noreload", "Serving gRPC on "),
        ("gunicorn orders.wsgi", "Listening at: "),
    ],
}

# Ports, where they are written as ports: after the host of an address or a URL (127.0.0.1:50051,
# 0.0.0.0:6000, [::1]:50051, localhost:8000, etcd.internal:2379, http://127.0.0.1:9464/metrics)
# and in startservice's "(gRPC on port 25324, metrics on 25325)". A dotted name ending in a file
# extension is a file, and what follows it a line number (settings/grpc.yaml:4): kept, as are
# all other numbers.
_HOST = (
    r"\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]*\]|localhost"
    r"|[A-Za-z][\w-]*(?:\.[\w-]+)*"
    r"\.(?!(?:py|pyi|yaml|yml|proto|json|toml|cfg|ini|txt|md):)[A-Za-z]\w*"
)
NORMALISE_PORTS = [
    (re.compile(rf"(?<![\w.:\[-])({_HOST}):\d{{1,5}}\b"), r"\1:<port>"),
    (re.compile(r"(://[\w.-]+):\d{1,5}\b"), r"\1:<port>"),
    (re.compile(r"\bgRPC on port \d+, metrics on \d+\b"), "gRPC on port <port>, metrics on <port>"),
]

NORMALISE = [
    # Log and gunicorn time stamps: 2025-01-01 12:00:00,000.
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?"), "<time>"),
    # Process ids: "pid 4242", and the one of the log format (INFO 4242 microframe.server).
    (re.compile(r"\bpid \d+"), "pid <pid>"),
    (re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d+\b"), r"\1 <pid>"),
    # Durations measured: "3 passed in 0.73s", "0.41ms".
    (re.compile(r"\b\d+(?:\.\d+)?m?s\b"), "<duration>"),
    # Ports: see NORMALISE_PORTS.
    *NORMALISE_PORTS,
]

SERVES = re.compile(r"\bmanage\.py\s+runserver\b|^gunicorn\b")
MARKER = re.compile(
    r"^<!--\s*(not-run|write-file|append-file|stop-servers)\s*(?::\s*(.*?))?\s*-->$"
)
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)

COMMAND_TIMEOUT = 120.0  # one command that does not serve (the service's tests take seconds)
SERVE_TIMEOUT = 60.0  # a server's first lines; a reload
STOP_TIMEOUT = 30.0  # a server's graceful stop, after CONTROL-C

pytestmark = pytest.mark.timeout(300)


# -- the pages -------------------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    body: str
    line: int  # of the opening fence, from 1
    markers: list[tuple[str, str]]  # (name, argument) of the marker comments right before it


def blocks(markdown: str) -> list[Block]:
    """The fenced code blocks of ``markdown``, with the markers right before each."""
    found = []
    end = 0
    for match in FENCE.finditer(markdown):
        markers: list[tuple[str, str]] = []
        for line in reversed(markdown[end : match.start()].splitlines()):
            if not line.strip():
                continue
            marker = MARKER.match(line.strip())
            if marker is None:
                break
            markers.insert(0, (marker[1], marker[2] or ""))
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        found.append(
            Block(match["lang"], body, markdown.count("\n", 0, match.start()) + 1, markers)
        )
        end = match.end()
    return found


@dataclass
class Sample:
    commands: list[str]
    shown: list[str]
    line: int


@dataclass
class Step:
    kind: str  # "sample", "write", "append", "stop"
    line: int
    sample: Sample | None = None
    path: str = ""
    text: str = ""


def steps(markdown: str) -> Iterator[Step]:
    """What a reader of the page does, in order."""
    found = blocks(markdown)
    for i, block in enumerate(found):
        names = [name for name, _ in block.markers]
        if "stop-servers" in names:
            yield Step("stop", block.line)
        for name, argument in block.markers:
            if name in ("write-file", "append-file"):
                yield Step(
                    "write" if name == "write-file" else "append",
                    block.line,
                    path=argument,
                    text=block.body,
                )
        following = found[i + 1] if i + 1 < len(found) else None
        is_sample = (
            block.lang == "sh"
            and following is not None
            and following.lang == "text"
            and not following.markers
            and _only_blank_between(markdown, block, following)
        )
        if "not-run" in names:
            assert is_sample or block.lang == "text", (
                f"line {block.line}: <!-- not-run --> is not before a command sample "
                "or a text block"
            )
            continue
        if is_sample:
            assert following is not None
            commands = [
                line.strip()
                for line in block.body.splitlines()
                if line.strip() and not line.strip().startswith("#")
            ]
            shown = following.body.rstrip().splitlines()
            yield Step("sample", block.line, sample=Sample(commands, shown, block.line))


def _only_blank_between(markdown: str, first: Block, second: Block) -> bool:
    lines = markdown.splitlines()
    closing = first.line + first.body.count("\n") + 1  # the closing fence's line, from 1
    return all(not line.strip() for line in lines[closing : second.line - 1])


def unrun_outputs(markdown: str) -> list[int]:
    """The lines of the text blocks that look like a command's output and are not checked: a
    text block after a sh block of the same section (headings start sections), with anything
    between, that is neither that sample's output nor marked ``<!-- not-run: REASON -->``."""
    found = blocks(markdown)
    inside = set()
    for block in found:
        inside.update(range(block.line, block.line + block.body.count("\n") + 2))
    headings = [
        n
        for n, line in enumerate(markdown.splitlines(), 1)
        if n not in inside and re.match(r"#{1,6} ", line)
    ]
    flagged = []
    for i, block in enumerate(found):
        if block.lang != "text" or any(name == "not-run" for name, _ in block.markers):
            continue
        section = max((h for h in headings if h < block.line), default=0)
        before = [b for b in found[:i] if b.line > section]
        if not any(b.lang == "sh" for b in before):
            continue
        previous = before[-1]
        if (
            previous.lang == "sh"
            and not block.markers
            and _only_blank_between(markdown, previous, block)
        ):
            continue  # a sample's output (run, or its sample marked not-run)
        flagged.append(block.line)
    return flagged


def pages_with_samples() -> list[str]:
    """The pages to run, as their path under docs/ (README.md under the root)."""
    pages = []
    for page in PAGES:
        try:
            run = any(step.kind == "sample" for step in steps(page.read_text(encoding="utf-8")))
        except AssertionError:  # a misplaced marker: the page's test says where
            run = True
        if run:
            pages.append(str(page.relative_to(DOCS if page.is_relative_to(DOCS) else ROOT)))
    return pages


# -- comparing -------------------------------------------------------------------------------


def normalise(line: str) -> str:
    line = line.rstrip()
    for pattern, replacement in NORMALISE:
        line = pattern.sub(replacement, line)
    return line


def matches(shown: list[str], outputs: list[tuple[list[str], list[str]]], prefix: bool) -> bool:
    """Whether ``shown`` is what the commands printed: for each command in turn, its stdout and
    stderr lines interleaved, each stream in its order; ``...`` stands for any number of lines.
    With ``prefix``, ``shown`` may stop before the end of what was printed (a server's first
    lines)."""
    want = [normalise(line) for line in shown]
    while want and not want[-1]:
        want.pop()
    streams = [([normalise(x) for x in out], [normalise(x) for x in err]) for out, err in outputs]

    @functools.cache
    def match(i: int, c: int, j: int, k: int) -> bool:
        if c < len(streams):
            out, err = streams[c]
            if j == len(out) and k == len(err):
                return match(i, c + 1, 0, 0)
        if i == len(want):
            return prefix or c == len(streams)
        if c == len(streams):
            return want[i].strip() == "..." and match(i + 1, c, 0, 0)
        out, err = streams[c]
        if want[i].strip() == "...":
            return (
                match(i + 1, c, j, k)
                or (j < len(out) and match(i, c, j + 1, k))
                or (k < len(err) and match(i, c, j, k + 1))
            )
        return (j < len(out) and out[j] == want[i] and match(i + 1, c, j + 1, k)) or (
            k < len(err) and err[k] == want[i] and match(i + 1, c, j, k + 1)
        )

    return match(0, 0, 0, 0)


# -- running ---------------------------------------------------------------------------------


_HOLDER = r"""
import fcntl, socket, struct, sys
# Bring the namespace's loopback up (ip link set lo up): SIOCGIFFLAGS, then SIOCSIFFLAGS | IFF_UP.
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sh22x", fcntl.ioctl(s, 0x8913, struct.pack("16sh22x", b"lo", 0)))[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 1))
print("ready", flush=True)
sys.stdin.read()  # until the test closes it (or dies)
"""


class Namespace:
    """A network namespace of the test's, held by a process; commands enter it with nsenter."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.user = False
        self.error = ""
        errors = []
        for unshare in (["unshare", "--net", "--map-root-user"], ["unshare", "--net"]):
            proc = subprocess.Popen(
                [*unshare, sys.executable, "-c", _HOLDER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            if ready and proc.stdout.readline().strip() == "ready":
                self.proc = proc
                self.user = "--map-root-user" in unshare
                return
            proc.kill()
            errors.append(f"{' '.join(unshare)}: {proc.communicate(timeout=10)[1].strip()}")
        self.error = "; ".join(errors)

    def enter(self) -> list[str]:
        if self.proc is None:  # no namespace here: the machine's own network
            return []
        user = ["--user", "--preserve-credentials"] if self.user else []
        return ["nsenter", f"--target={self.proc.pid}", "--net", *user, "--"]

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Lines:
    """The lines a process writes to one pipe, each with the time it arrived."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip("\n")))
        pipe.close()

    def text(self) -> list[str]:
        return [line for _, line in list(self.lines)]


@dataclass
class Server:
    command: str
    proc: subprocess.Popen[bytes]
    out: Lines
    err: Lines
    watched: Path | None = None  # the directory an autoreloading server watches

    def settled(self) -> bool:
        """Whether this server has restarted since the last change of a file it watches: the
        last of its watch/reload/serve lines is a serve line, and the batch of changes that
        started it was taken after the last change (the watcher takes a batch 50 ms after its
        last change at the earliest: 25 ms of margin for the time stamps)."""
        if self.watched is None:
            return True
        events = [
            (at, "serve" if line.startswith("Serving gRPC on ") else "reload")
            for at, line in list(self.out.lines)
            if line.startswith(("Serving gRPC on ", "Watching ")) or line.endswith("reloading.")
        ]
        if not events or events[-1][1] != "serve":
            return False
        reloads = [at for at, kind in events if kind == "reload"]
        return bool(reloads) and reloads[-1] > _newest_watched(self.watched) + 0.025


def _newest_watched(root: Path) -> float:
    """The last change of the files runserver's autoreloader watches under ``root``."""
    import watchfiles

    watch = watchfiles.PythonFilter(extra_extensions=(".yaml", ".yml", ".proto"))
    newest = 0.0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in watch.ignore_dirs]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if watch(watchfiles.Change.modified, path):
                try:
                    newest = max(newest, os.stat(path).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


@dataclass
class Reader:
    """A reader following one page: where they are, what they left serving, what differed."""

    namespace: Namespace
    env: dict[str, str]
    cwd: Path
    real: Path  # the directory of the run...
    shown: str  # ... and how the docs show it
    page: str
    servers: list[Server] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def shown_as(self, text: str) -> str:
        return text.replace(str(self.real), self.shown)

    def fail(self, line: int, message: str) -> None:
        self.failures.append(f"{self.page}:{line}: {message}")

    # -- steps -----------------------------------------------------------------------------

    def settle(self, line: int) -> None:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while not all(
            server.settled() or server.proc.poll() is not None for server in self.servers
        ):
            if time.monotonic() > deadline:
                self.fail(line, f"a server did not reload within {SERVE_TIMEOUT} s")
                return
            time.sleep(0.05)

    def write(self, step: Step) -> None:
        path = self.cwd / step.path
        path.parent.mkdir(parents=True, exist_ok=True)
        separate = step.kind == "append" and path.exists() and path.stat().st_size > 0
        with open(path, "a" if step.kind == "append" else "w", encoding="utf-8") as f:
            f.write("\n\n" + step.text if separate else step.text)

    def run(self, sample: Sample) -> None:
        printed: list[tuple[str, str]] = []
        for command in sample.commands:
            if command.startswith("cd "):
                self.cwd = (self.cwd / os.path.expanduser(shlex.split(command)[1])).resolve()
                continue
            if SERVES.search(command):
                assert len(sample.commands) == 1, (
                    f"line {sample.line}: a server's sample has one command"
                )
                self.serve(command, sample)
                return
            _, out, err = self.command(command)
            printed.append((self.shown_as(out), self.shown_as(err)))
        outputs = _terminal(printed)
        if not matches(sample.shown, outputs, prefix=False):
            self.fail(sample.line, _difference(sample, outputs))

    def command(self, command: str) -> tuple[int, str, str]:
        """Run ``command`` to its end (within ``COMMAND_TIMEOUT``): its status, stdout, stderr."""
        proc = self.spawn(command)
        try:
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            err += f"\n(killed: still running after {COMMAND_TIMEOUT} s)".encode()
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def spawn(self, command: str) -> subprocess.Popen[bytes]:
        """``command`` under bash in the page's namespace and directory, in a process group of
        its own (CONTROL-C reaches all it started; a hung one is killed with all of it)."""
        return subprocess.Popen(
            [*self.namespace.enter(), "bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def start(self, command: str) -> Server:
        proc = self.spawn(command)
        assert proc.stdout is not None and proc.stderr is not None
        server = Server(command, proc, Lines(proc.stdout), Lines(proc.stderr))
        self.servers.append(server)
        return server

    def serve(self, command: str, sample: Sample) -> None:
        server = self.start(command)
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            exited = server.proc.poll() is not None
            if exited:
                server.out.thread.join(10)
                server.err.thread.join(10)
            output = [
                (
                    [self.shown_as(x) for x in server.out.text()],
                    [self.shown_as(x) for x in server.err.text()],
                )
            ]
            if matches(sample.shown, output, prefix=not exited):
                break
            if exited or time.monotonic() > deadline:
                why = "it exited" if exited else f"not within {SERVE_TIMEOUT} s"
                self.fail(sample.line, f"({why}) " + _difference(sample, output))
                break
            time.sleep(0.05)
        watching = [x for x in server.out.text() if x.startswith("Watching ")]
        if watching:
            server.watched = Path(watching[0].split(" ")[1])

    def wait_ready(self, command: str, ready: str) -> None:
        server = self.start(command)
        deadline = time.monotonic() + SERVE_TIMEOUT
        while not any(ready in x for x in server.out.text() + server.err.text()):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{command!r} did not print {ready!r}:\n"
                    + "\n".join(server.out.text() + server.err.text())
                )
            time.sleep(0.05)

    def stop_servers(self) -> None:
        for server in self.servers:
            try:
                os.killpg(server.proc.pid, signal.SIGINT)  # CONTROL-C
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + STOP_TIMEOUT
        for server in self.servers:
            while _group_alive(server.proc.pid) and time.monotonic() < deadline:
                server.proc.poll()
                time.sleep(0.05)
            if _group_alive(server.proc.pid):
                self.failures.append(
                    f"{self.page}: {server.command!r} did not stop within {STOP_TIMEOUT} s"
                )
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
        self.servers = []


def _terminal(printed: list[tuple[str, str]]) -> list[tuple[list[str], list[str]]]:
    """The lines of each command's (stdout, stderr), as a terminal shows them: a command whose
    output does not end with a newline leaves its last line to be continued by the next one's."""
    lines: list[tuple[list[str], list[str]]] = []
    carried = ["", ""]
    for texts in printed:
        streams: list[list[str]] = []
        for n, text in enumerate(texts):
            text = carried[n] + text
            carried[n] = ""
            if text and not text.endswith("\n"):
                text, _, carried[n] = text.rpartition("\n")
                text += "\n" if text else ""
            streams.append(text.splitlines())
        lines.append((streams[0], streams[1]))
    if lines:
        lines[-1][0].extend(carried[:1] if carried[0] else [])
        lines[-1][1].extend(carried[1:] if carried[1] else [])
    return lines


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # only a leftover of another user could hold the id
        return False
    return True


def _difference(sample: Sample, outputs: list[tuple[list[str], list[str]]]) -> str:
    printed = []
    for out, err in outputs:
        printed += out[:40] + err[:40]
    return (
        "what the page shows is not what\n    "
        + "\n    ".join(sample.commands)
        + "\nprints.\n--- shown:\n"
        + "\n".join(sample.shown)
        + "\n--- printed (its stdout, then its stderr):\n"
        + "\n".join(printed)
        + "\n---"
    )


def _environment(home: Path, registry: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MICROFRAME_", "PYTEST_")) and k not in ("PYTHONPATH", "COLUMNS")
    }
    env.update(
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        HOME=str(home),
        MICROFRAME_REGISTRY_DIR=str(registry),
    )
    return env


def _directory_as_long_as(shown: str, tmp_path: Path) -> Path:
    """A new directory whose path is as long as ``shown``, where one can be made: diffsettings'
    pretty-printer wraps a value by the length of its text, paths included. Else one in
    ``tmp_path``."""
    base = Path(tempfile.mkdtemp(prefix="mf", dir="/tmp" if os.path.isdir("/tmp") else None))
    left = len(shown) - len(str(base)) - 1
    if left < 1:
        os.rmdir(base)
        (tmp_path / "me").mkdir()
        return tmp_path / "me"
    (base / ("m" * left)).mkdir()
    return base / ("m" * left)


#: The ports the pages' commands serve on (the example's, its staging overlay's, the gateway's,
#: the new orders service's).
DOCUMENTED_PORTS = (50051, 50052, 9464, 9465, 8000, 25324, 25325)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    for tool in ("unshare", "nsenter", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    held = Namespace()
    if held.proc is None:
        # A container without the right to make namespaces: the commands use the machine's own
        # loopback. The suite runs one test at a time and every other test serves on free
        # ports, so the documented ones are free, unless something outside the suite holds them.
        busy = [port for port in DOCUMENTED_PORTS if not _port_free(port)]
        if busy:
            message = (
                f"cannot make a network namespace ({held.error}) and the documented ports "
                f"{busy} are in use on this machine"
            )
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    yield held
    held.close()


@pytest.mark.parametrize("page", pages_with_samples())
def test_command_samples_print_what_the_page_shows(
    page: str, tmp_path: Path, namespace: Namespace
) -> None:
    markdown = (DOCS / page if (DOCS / page).is_file() else ROOT / page).read_text(encoding="utf-8")
    if "curl " in markdown:
        from support.env import require_binary

        require_binary("curl")
    if page in HOME_PAGES:
        real = home = _directory_as_long_as(HOME_SHOWN, tmp_path)
        shown = HOME_SHOWN
    else:
        real, shown = _directory_as_long_as(REPO_SHOWN, tmp_path), REPO_SHOWN
        home = real.parent
        for name in REPO_FILES:
            source, target = ROOT / name, real / name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    reader = Reader(namespace, _environment(home, tmp_path / "registry"), real, real, shown, page)
    try:
        for command, ready in HOME_PAGES.get(page, []):
            if command.startswith("cd "):
                reader.cwd = reader.cwd / command[3:]
            elif ready is not None:
                reader.wait_ready(command, ready)
            else:
                status, out, err = reader.command(command)
                assert status == 0, f"{command!r} failed:\n{out}{err}"
        for step in steps(markdown):
            reader.settle(step.line)
            if step.kind == "stop":
                reader.stop_servers()
            elif step.kind in ("write", "append"):
                reader.write(step)
            else:
                assert step.sample is not None
                reader.run(step.sample)
    finally:
        reader.stop_servers()
        shutil.rmtree(home, ignore_errors=True)
    if reader.failures:
        pytest.fail("\n\n".join(reader.failures), pytrace=False)


def test_command_samples_are_sh_blocks_followed_by_text() -> None:
    """Every sample is written the one way this test reads: no ``$ command`` in a text block,
    no comment right before a block that is not a marker, every page's steps readable, no
    unchecked output after a sh block (``unrun_outputs``)."""
    wrong = []
    for page in PAGES:
        markdown = page.read_text(encoding="utf-8")
        name = page.relative_to(ROOT)
        for block in blocks(markdown):
            first = block.body.lstrip().splitlines()[:1]
            if block.lang in ("text", "console", "") and first and first[0].startswith("$ "):
                wrong.append(f"{name}:{block.line}: {first[0]} (write a sh block, then the output)")
        for comment in re.finditer(r"^<!--.*-->[ \t]*\n(?=(?:[ \t]*\n)*[ \t]*```)", markdown, re.M):
            if not MARKER.match(comment[0].strip()):
                line = markdown.count("\n", 0, comment.start()) + 1
                wrong.append(f"{name}:{line}: {comment[0].strip()} is no marker")
        try:
            list(steps(markdown))
        except AssertionError as err:
            wrong.append(f"{name}: {err}")
        for line in unrun_outputs(markdown):
            wrong.append(
                f"{name}:{line}: a text block after a sh block is not that block's output "
                "(put its commands in a sh block right before it, or mark it not-run: REASON)"
            )
    assert not wrong, "\n".join(wrong)


def test_the_pages_are_read_as_a_reader_follows_them() -> None:
    """Samples, markers and what is not a sample, on a page made up for the purpose."""
    page = "\n".join(
        [
            "<!-- write-file: hello.py -->",
            "```python",
            "print('hello')",
            "```",
            "",
            "```sh",
            "# a comment",
            "python hello.py",
            "```",
            "",
            "```text",
            "hello",
            "```",
            "",
            "```sh",
            "python manage.py genproto   # no output shown: not a sample",
            "```",
            "",
            "Some text.",
            "",
            "```text",
            "not the output of the block above",
            "```",
            "",
            "<!-- not-run: needs etcd -->",
            "```sh",
            "python manage.py register --list",
            "```",
            "",
            "```text",
            "orders 10.0.0.5:50051",
            "```",
            "",
            "<!-- stop-servers -->",
            "<!-- append-file: conf/a.yaml -->",
            "  ```yaml",
            "  A: 1",
            "  ```",
            "",
        ]
    )
    found = list(steps(page))
    assert [(s.kind, s.line) for s in found] == [
        ("write", 2),
        ("sample", 6),
        ("stop", 36),
        ("append", 36),
    ]
    assert (found[0].path, found[0].text) == ("hello.py", "print('hello')\n")
    assert found[1].sample is not None
    assert found[1].sample.commands == ["python hello.py"] and found[1].sample.shown == ["hello"]
    assert (found[3].path, found[3].text) == ("conf/a.yaml", "A: 1\n")
    try:
        list(steps("<!-- not-run: why -->\n```sh\nls\n```\n"))
    except AssertionError as err:
        assert "not before a command sample" in str(err)
    else:
        raise AssertionError("a not-run marker before no sample was accepted")


def test_the_comparison_can_fail() -> None:
    """The comparison itself: interleaved streams, ``...``, prefixes, normalisation."""
    out = ["Serving gRPC on 127.0.0.1:50051, pid 17339. Quit with CONTROL-C."]
    err = ["2026-12-01 13:44:58,184 INFO 17339 microframe.server [- - -] serving 4 methods"]
    shown_out = "Serving gRPC on 127.0.0.1:50051, pid 4242. Quit with CONTROL-C."
    shown_err = "2025-01-01 12:00:00,000 INFO 4242 microframe.server [- - -] serving 4 methods"
    assert matches([shown_out, shown_err], [(out, err)], prefix=False)
    assert matches([shown_err, shown_out], [(out, err)], prefix=False)
    assert matches([shown_out], [(out, err)], prefix=True)
    assert not matches([shown_out], [(out, err)], prefix=False)
    assert matches(["..."], [(out, err)], prefix=False)
    assert matches([shown_out.replace("50051", "50052")], [(out, err)], prefix=True)  # a port
    assert not matches([shown_out.replace("127.0.0.1", "0.0.0.0")], [(out, err)], prefix=True)
    assert not matches([shown_err.replace("4 methods", "5 methods")], [(out, err)], prefix=True)
    assert matches(["a", "...", "d"], [(["a", "b", "c", "d"], [])], prefix=False)
    assert not matches(["a", "...", "c"], [(["a", "b", "c", "d"], [])], prefix=False)
    assert matches(["one", "two"], [(["one"], []), ([], ["two"])], prefix=False)
    assert not matches(["two", "one"], [(["one"], []), ([], ["two"])], prefix=False)
    assert matches(["3 passed in 0.70s"], [(["3 passed in 1.76s"], [])], prefix=False)
    assert not matches(["3 passed in 0.70s"], [(["4 passed in 0.70s"], [])], prefix=False)
    # Three curls without a final newline make one line in a terminal.
    assert _terminal([("a", ""), ("b", "x\n"), ("c\n", "")]) == [
        ([], []),
        ([], ["x"]),
        (["abc"], []),
    ]
    assert _terminal([("a\nb", "")]) == [(["a", "b"], [])]


def test_ports_are_normalised_where_they_are_ports() -> None:
    """Ports after a host, in addresses and URLs, and in startservice's line; nothing else."""
    cases = {
        "Serving gRPC on 127.0.0.1:50051 (metrics on http://127.0.0.1:9464/metrics), pid 7.": (
            "Serving gRPC on 127.0.0.1:<port> (metrics on http://127.0.0.1:<port>/metrics), "
            "pid <pid>."
        ),
        "0.0.0.0:6000 [::1]:50051 [::]:8000 localhost:8000": (
            "0.0.0.0:<port> [::1]:<port> [::]:<port> localhost:<port>"
        ),
        "instance=10.0.0.5:50051 tried=10.0.0.5:50051,10.0.0.6:50051": (
            "instance=10.0.0.5:<port> tried=10.0.0.5:<port>,10.0.0.6:<port>"
        ),
        "cannot connect to etcd at etcd.internal:2379": (
            "cannot connect to etcd at etcd.internal:<port>"
        ),
        "curl http://orders:8000/v1/hello/Ada": "curl http://orders:<port>/v1/hello/Ada",
        "Created the service 'orders' (gRPC on port 25324, metrics on 25325).": (
            "Created the service 'orders' (gRPC on port <port>, metrics on <port>)."
        ),
        # Not ports: a file's line, a version, a count, a method, a plain number.
        "at /srv/orders/app/router.py:4 and conf/product/10-grpc.yaml:12": (
            "at /srv/orders/app/router.py:4 and conf/product/10-grpc.yaml:12"
        ),
        "microframe 0.1.0 serving 4 methods, 18214 call(s), port 50051": (
            "microframe 0.1.0 serving 4 methods, 18214 call(s), port 50051"
        ),
        "orders.Orders/SayHello {'PORT': 50051}": "orders.Orders/SayHello {'PORT': 50051}",
    }
    for line, normalised in cases.items():
        assert normalise(line) == normalised, line
    assert normalise("127.0.0.1:50051") == normalise("127.0.0.1:25324")
    assert normalise("127.0.0.1:50051") != normalise("0.0.0.0:50051")


def test_output_after_a_sh_block_is_a_sample_or_marked() -> None:
    """``unrun_outputs``: a text block after a sh block of its section, with prose or other
    blocks between, is flagged, unless marked; text blocks of a section without sh are not."""
    page = "\n".join(
        [
            "## One",  # 1
            "```text",  # 2: no sh before it in its section
            "a diagram",
            "```",
            "```sh",  # 5
            "python manage.py runserver",
            "```",
            "It prints:",
            "```text",  # 9: prose between: flagged
            "Serving gRPC on 127.0.0.1:50051",
            "```",
            "```sh",  # 12
            "python manage.py check",
            "```",
            "```text",  # 15: a sample
            "System check identified no issues (0 silenced).",
            "```",
            "```text",  # 18: after a sample's output: flagged
            "CommandError: 127.0.0.1:9464 is already in use",
            "```",
            "<!-- not-run: a production server's log -->",
            "```text",  # 22: marked
            "... INFO 4242 microframe.server [- - -] stopped",
            "```",
            "## Two",
            "```text",  # 26: a new section
            "orders/",
            "```",
            "```python",
            "# ```sh in a python block is no block",
            "```",
        ]
    )
    assert unrun_outputs(page) == [9, 18]
    assert [s.kind for s in steps(page)] == ["sample"]
