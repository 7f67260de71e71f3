"""The innermost step of the client chain: the call on the wire, on the chosen instance's
channel.

:func:`connection_handler` builds it once per client and method. It makes the call with the
method's grpc multicallable, turns grpc's errors into microframe's
(:class:`~microframe.core.exceptions.RpcError` subclasses, trailers kept), and reports how the
call went: to the balancer (latency, success: :data:`~microframe.client.outliers.UNHEALTHY`
codes count against the instance) and to the client's ejections (an instance that refused the
call before any handler is kept away from for a while).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from microframe.client.balancers import Balancer
from microframe.client.call import ClientCall, ClientHandler
from microframe.client.channels import get_channel_pool
from microframe.client.middleware import reached_a_handler
from microframe.client.options import ClientOptions
from microframe.client.outliers import UNHEALTHY, Ejections, InstanceUnreachable
from microframe.core.error_details import DETAILS_KEY, details_of
from microframe.core.exceptions import DeadlineExceeded, RpcError, Unavailable, error_for
from microframe.core.router import RpcKind
from microframe.utils.timeouts import with_timeout

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: Refusals in a row after which the channel to an instance is closed (see ``unreachable``).
DISCARD_STRIKES = 2
_INFINITE = float("inf")
#: A stream's first reply: not awaited (a stream of requests), or the stream had none.
_NOTHING = object()
_END = object()


def _from_aio(err: grpc.aio.AioRpcError) -> RpcError:
    """The error a failed call raises: its code, message, trailers and decoded details (a
    declared error's own class when its ErrorInfo names one this process knows)."""
    trailers = tuple(
        (str(k), v if isinstance(v, bytes) else str(v)) for k, v in (err.trailing_metadata() or ())
    )
    details = details_of(err) if any(k == DETAILS_KEY for k, _ in trailers) else ()
    return error_for(err.code(), err.details() or err.code().name.lower(), trailers, details)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]


def connection_handler(
    method: str,
    kind: RpcKind,
    *,
    service: str,
    options: ClientOptions,
    balancer: Balancer,
    ejections: Ejections,
    channel: Callable[[str], Any],
) -> ClientHandler:
    """The handler that calls ``method`` of ``service`` on ``call.instance``.

    ``channel(address)`` returns the channel to an address (the event loop's shared one).
    """
    factory_name = str(kind)  # RpcKind's values are grpc's names of its multicallables
    # Per address: [the channel, its multicallable, whether it answered the last call], built on
    # first use (building a multicallable per call costs more than the rest of the chain). A
    # channel the pool closed and replaced is noticed, and its entry made anew.
    entries: dict[str, list[Any]] = {}

    def entry_for(call: ClientCall, address: str) -> list[Any]:
        current = channel(address)
        entry = entries.get(address)
        if entry is None or entry[0] is not current:
            multicallable = getattr(current, factory_name)(
                method,
                request_serializer=_serialize,
                response_deserializer=call.response_class.FromString,
            )
            entry = entries[address] = [current, multicallable, False]
        return entry

    connect_timeout = options.connect_timeout
    ready = grpc.ChannelConnectivity.READY
    failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE
    late = f"deadline exceeded before calling {service}{method}"
    missing = f"no instance of {service!r} to call"

    async def connect(call: ClientCall, address: str, channel: Any) -> None:
        """Make sure the instance's connection is up (called unless the channel answered the
        last call: asking grpc costs more than the rest of the chain): while it is being set
        up, wait up to ``CONNECT_TIMEOUT``; when the last attempt failed (refused, reset), give
        up at once. Either way an unreachable instance costs little, and the call is retried on
        another, instead of spending its whole deadline on one connection."""
        state = channel.get_state(try_to_connect=True)
        if state is ready:
            return
        if state is not failed:
            # Every call waiting for this channel waits on one task (the pool's).
            settling = get_channel_pool().settling(channel, state)
            try:
                state = await with_timeout(
                    asyncio.shield(settling), min(connect_timeout, call.remaining())
                )
            except TimeoutError:
                if call.remaining() <= 0:  # the call's time ran out, not the instance's
                    raise DeadlineExceeded(late) from None
                raise InstanceUnreachable(
                    f"cannot connect to {service} at {address} within {connect_timeout:g} s"
                ) from None
            if state is ready:
                return
        raise InstanceUnreachable(f"cannot connect to {service} at {address}")

    def timeout_of(call: ClientCall) -> float | None:
        remaining = call.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(late)
        return None if remaining == _INFINITE else remaining

    one_request = not kind.client_streaming

    pool_of = get_channel_pool

    def begin(call: ClientCall) -> tuple[Any, list[Any] | None, float]:
        """The attempt's instance (noted as tried), its channel entry (None: no channel to it
        yet, see :func:`first_entry`), its balancer token."""
        instance = call.instance
        if instance is None:
            raise Unavailable(missing)
        call.tried.append(instance.id)
        address = instance.address
        if address in entries or pool_of().has(address):
            entry: list[Any] | None = entry_for(call, address)
        else:
            entry = None
        return instance, entry, balancer.start(instance)

    async def first_entry(call: ClientCall, instance: Any) -> list[Any]:
        """The entry of an address with no channel yet, made once a plain TCP connection to
        it was accepted (the pool's probe, shared by the calls of the moment): an address
        that refuses costs a socket, not a grpc channel, so that finding the live instances
        of a fleet full of dead entries takes milliseconds."""
        if not await pool_of().reachable(instance.address, min(connect_timeout, call.remaining())):
            if call.remaining() <= 0:  # the call's time ran out, not the instance's
                raise DeadlineExceeded(late)
            raise InstanceUnreachable(f"cannot connect to {service} at {instance.address}")
        return entry_for(call, instance.address)

    def refused(error: RpcError, instance: Any, entry: list[Any]) -> None:
        """An UNAVAILABLE no handler answered: the instance is gone or refusing."""
        if error.code is _UNAVAILABLE and not reached_a_handler(error):
            entry[2] = False
            ejections.eject(instance.id)

    def unreachable(instance: Any) -> None:
        """No connection could be made to ``instance``: eject it. Its channel fails the next
        call at once while it stays failed; one that refused :data:`DISCARD_STRIKES` times in
        a row is closed, so that instances gone dead leave no channels behind (the next call
        to one, after its ejection, probes it first, as a new one)."""
        ejections.eject(instance.id)
        if ejections.strikes(instance.id) >= DISCARD_STRIKES:
            entries.pop(instance.address, None)
            get_channel_pool().discard(instance.address)

    if not kind.server_streaming:

        async def unary_response(call: ClientCall) -> Any:
            instance, entry, token = begin(call)
            ok = False
            try:
                if entry is None:
                    entry = await first_entry(call, instance)
                if not entry[2]:
                    await connect(call, instance.address, entry[0])
                try:
                    pending = entry[1](
                        call.request, timeout=timeout_of(call), metadata=call.metadata
                    )
                except grpc.aio.UsageError:  # its channel was closed meanwhile: not sent
                    raise InstanceUnreachable(
                        f"the channel to {service} at {instance.address} was closed"
                    ) from None
                response = await pending
                ok = entry[2] = True
                return response
            except InstanceUnreachable:
                unreachable(instance)
                raise
            except Unavailable:
                if entry is not None:
                    entry[2] = False
                ejections.eject(instance.id)
                raise
            except grpc.aio.AioRpcError as err:
                ok = err.code() not in UNHEALTHY
                error = _from_aio(err)
                if entry is not None:
                    refused(error, instance, entry)
                raise error from None
            finally:
                balancer.done(instance, token, ok)
                if ok and ejections:
                    ejections.clear(instance.id)

        return unary_response

    async def stream_response(call: ClientCall) -> AsyncIterator[Any]:
        """Start the stream. With one request message, wait for the first reply here, so that
        a refused connection or an error before any reply fails this step, where the retry
        step around it can try another instance; a stream of requests (which may wait for the
        replies) is handed back at once."""
        instance, entry, token = begin(call)
        responses: Any = None
        first: Any = _NOTHING
        try:
            if entry is None:
                entry = await first_entry(call, instance)
            if not entry[2]:
                await connect(call, instance.address, entry[0])
            responses = entry[1](call.request, timeout=timeout_of(call), metadata=call.metadata)
            if one_request:
                try:
                    first = await responses.__aiter__().__anext__()
                except StopAsyncIteration:
                    first = _END
        except Unavailable as err:
            if isinstance(err, InstanceUnreachable):
                unreachable(instance)
            else:
                if entry is not None:
                    entry[2] = False
                ejections.eject(instance.id)
            balancer.done(instance, token, False)
            raise
        except grpc.aio.AioRpcError as err:
            error = _from_aio(err)
            if entry is not None:
                refused(error, instance, entry)
            balancer.done(instance, token, err.code() not in UNHEALTHY)
            raise error from None
        except grpc.aio.UsageError:  # its channel was closed meanwhile: nothing was sent
            balancer.done(instance, token, False)
            raise InstanceUnreachable(
                f"the channel to {service} at {instance.address} was closed"
            ) from None
        except BaseException:
            balancer.done(instance, token, False)
            if responses is not None:
                responses.cancel()
            raise
        entry[2] = True

        async def messages() -> AsyncIterator[Any]:
            ok = False
            try:
                if first is not _NOTHING:
                    if first is _END:
                        ok = True
                        return
                    yield first
                async for message in responses:
                    yield message
                ok = True
            except grpc.aio.AioRpcError as err:
                ok = err.code() not in UNHEALTHY
                raise _from_aio(err) from None
            finally:
                balancer.done(instance, token, ok)
                responses.cancel()
                if ok and ejections:
                    ejections.clear(instance.id)

        return messages()

    return stream_response
