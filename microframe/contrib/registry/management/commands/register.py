"""``register``: register this service's instance by hand, or look into the registry."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

from microframe.management.base import BaseCommand, CommandError, CommandParser
from microframe.utils.timeouts import with_timeout


class Command(BaseCommand):
    help = (
        "Register the configured instance in REGISTRY and keep it registered until interrupted "
        "(then deregister it); or --list, --watch, --deregister."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "address",
            nargs="?",
            help='"HOST:PORT" to advertise (default: REGISTRY["ADVERTISE"], else GRPC HOST and '
            "PORT).",
        )
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--list", nargs="?", const="", metavar="SERVICE", dest="list_service",
            help="List the instances of SERVICE, or every service with its instances.",
        )
        action.add_argument(
            "--watch", metavar="SERVICE", help="Print the instances of SERVICE as they change."
        )
        action.add_argument(
            "--deregister", metavar="ID", help="Remove the instance ID (of --service)."
        )
        parser.add_argument(
            "--service", help="The service of --deregister (default: SERVICE_NAME)."
        )
        parser.add_argument("--json", action="store_true", help="Print JSON (--list).")
        parser.add_argument(
            "--timeout", type=float, default=5.0,
            help="Seconds to wait for the registry before giving up (default 5).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        import microframe

        microframe.setup()
        try:
            asyncio.run(self._run(options))
        except KeyboardInterrupt:
            pass

    async def _run(self, options: dict[str, Any]) -> None:
        from microframe.discovery import RegistryError, build_registry

        registry = build_registry()
        timeout = options["timeout"]
        try:
            if options["list_service"] is not None:
                listed = self._list(registry, options["list_service"], options["json"])
                await with_timeout(listed, timeout)
            elif options["watch"]:
                await self._watch(registry, options["watch"], timeout)
            elif options["deregister"]:
                await with_timeout(self._deregister(registry, options), timeout)
            else:
                await self._register(registry, options, timeout)
        except RegistryError as err:
            raise CommandError(str(err)) from None
        except TimeoutError:
            raise CommandError(f"The registry did not answer within {timeout} s.") from None
        finally:
            try:
                await with_timeout(registry.close(), timeout)
            except (RegistryError, TimeoutError):
                pass

    # -- the actions ---------------------------------------------------------------------------

    async def _list(self, registry: Any, service: str, as_json: bool) -> None:
        names = [service] if service else await registry.services()
        found = {name: await registry.instances(name) for name in names}
        if as_json:
            by_name = {n: [i.to_dict() for i in found[n]] for n in names}
            self.stdout.write(json.dumps(by_name, indent=2, sort_keys=True))
            return
        if not any(found.values()):
            if service:
                self.stdout.write(f"No instance of {service!r}.")
            else:
                self.stdout.write("No service is registered.")
            return
        for name in names:
            for instance in found[name]:
                self.stdout.write(self._line(instance))

    async def _watch(self, registry: Any, service: str, timeout: float) -> None:
        from microframe.discovery import RegistryUnavailable

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        previous: dict[str, Any] | None = None
        stream = registry.watch(service)
        first = True
        nxt: asyncio.Future[Any] | None = None
        try:
            while not stop.is_set():
                nxt = asyncio.ensure_future(stream.__anext__())
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {nxt, stopper},
                    timeout=timeout if first else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                stopper.cancel()
                if nxt not in done:
                    await _cancel_and_wait(nxt)
                    if first and not stop.is_set():
                        raise RegistryUnavailable(
                            f"The registry did not answer within {timeout} s."
                        )
                    break
                try:
                    instances = nxt.result()
                except StopAsyncIteration:
                    break
                first = False
                current = {i.id: i for i in instances}
                stamp = time.strftime("%H:%M:%S")
                if previous is None:
                    self.stdout.write(f"{stamp} {service}: {len(current)} instance(s)")
                    for instance in current.values():
                        self.stdout.write(f"  {self._line(instance)}")
                else:
                    for key in current.keys() - previous.keys():
                        self.stdout.write(f"{stamp} + {self._line(current[key])}")
                    for key in previous.keys() - current.keys():
                        self.stdout.write(f"{stamp} - {self._line(previous[key])}")
                    for key in current.keys() & previous.keys():
                        if current[key] != previous[key]:
                            self.stdout.write(f"{stamp} ~ {self._line(current[key])}")
                self.stdout.flush()
                previous = current
        finally:
            # The generator cannot be closed while a step of it still runs in a task: end that
            # step first (cancelling it ends the generator too), then close it.
            if nxt is not None and not nxt.done():
                await _cancel_and_wait(nxt)
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _deregister(self, registry: Any, options: dict[str, Any]) -> None:
        from microframe.conf import settings

        name = options["service"] or settings.SERVICE_NAME
        existing = {i.id: i for i in await registry.instances(name)}
        instance = existing.get(options["deregister"])
        if instance is None:
            raise CommandError(f"No instance {options['deregister']!r} of {name!r} is registered.")
        await registry.deregister(instance)
        self.stdout.write(f"Deregistered {instance.id} of {name}.")

    async def _register(self, registry: Any, options: dict[str, Any], timeout: float) -> None:
        from microframe.conf import settings
        from microframe.contrib.registry.registration import instance_from_settings
        from microframe.discovery.instance import split_address

        if options["address"]:
            try:
                host, port = split_address(options["address"])
            except ValueError as err:
                raise CommandError(str(err)) from None
        else:
            host, port = settings.GRPC["HOST"], int(settings.GRPC["PORT"])
        instance = instance_from_settings(host, port)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await with_timeout(registry.register(instance), timeout)
        backend = getattr(registry, "backend_name", type(registry).__name__)
        self.stdout.write(
            f"Registered {instance.id} as {instance.name} at {instance.address} in {backend}; "
            "kept alive until CONTROL-C."
        )
        self.stdout.flush()
        await stop.wait()
        await with_timeout(registry.deregister(instance), timeout)
        self.stdout.write(f"Deregistered {instance.id}.")

    @staticmethod
    def _line(instance: Any) -> str:
        meta = " ".join(f"{k}={v}" for k, v in sorted(instance.metadata.items()))
        version = f" version={instance.version}" if instance.version else ""
        return (
            f"{instance.name} {instance.id} {instance.address} "
            f"weight={instance.weight}{version} {meta}"
        ).rstrip()


async def _cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, whatever it ended with."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: a step that failed as it was cancelled is not reported
