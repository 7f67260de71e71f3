"""A process that locks or campaigns on etcd, as the coordination tests drive it.

    contender.py counter ENDPOINTS PREFIX TTL N COUNTER_FILE TOKEN_LOG
        increment the number in COUNTER_FILE N times, each under lock("counter"), appending the
        fencing token of each acquisition to TOKEN_LOG
    contender.py hold ENDPOINTS PREFIX TTL NAME
        take lock NAME, print "held <token>", then wait to be killed
    contender.py wait ENDPOINTS PREFIX TTL NAME TIMEOUT
        print "waiting", take lock NAME, print "held <token>"
    contender.py campaign ENDPOINTS PREFIX TTL NAME VALUE
        campaign in election NAME; print "elected VALUE" and "revoked VALUE" as they happen,
        and answer each "leader" line read on stdin with "leader <value>"
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path


def configure(endpoints: str, prefix: str, ttl: str) -> None:
    from microframe.conf import settings

    settings.configure(COORDINATION={
        "OPTIONS": {"endpoints": endpoints.split(","), "timeout": 2, "dial_timeout": 2},
        "PREFIX": prefix, "TTL": int(ttl),
    })


def say(*words: object) -> None:
    print(*words, flush=True)


async def counter(n: str, counter_file: str, token_log: str) -> None:
    from microframe.contrib.coordination import lock

    path, log = Path(counter_file), Path(token_log)
    for _ in range(int(n)):
        async with lock("counter") as held:
            count = int(path.read_text() or 0)
            await asyncio.sleep(0.005)  # a window for a lost update, were the lock broken
            path.write_text(str(count + 1))
            with log.open("a") as f:
                f.write(f"{held.token}\n")


async def hold(name: str) -> None:
    from microframe.contrib.coordination import lock

    async with lock(name) as held:
        say("held", held.token)
        await asyncio.Event().wait()


async def wait(name: str, timeout: str) -> None:
    from microframe.contrib.coordination import lock

    say("waiting")
    async with lock(name, timeout=float(timeout)) as held:
        say("held", held.token, time.monotonic())


async def campaign(name: str, value: str) -> None:
    from microframe.contrib.coordination import Election

    election = Election(name, value)
    election.on_elected(lambda: say("elected", value, time.monotonic()))
    election.on_revoked(lambda: say("revoked", value, time.monotonic()))
    election.start()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        say("leader", await election.leader())


def main() -> None:
    mode, endpoints, prefix, ttl, *args = sys.argv[1:]
    configure(endpoints, prefix, ttl)
    asyncio.run({"counter": counter, "hold": hold, "wait": wait, "campaign": campaign}[mode](*args))


if __name__ == "__main__":
    main()
