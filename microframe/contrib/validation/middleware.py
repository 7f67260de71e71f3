"""``ValidationMiddleware``: each request checked against the rules of its proto before the
controller runs.

A request that breaks a rule is answered INVALID_ARGUMENT, "invalid <Message>: <field>: <what>"
(the first violation), with a ``google.rpc.BadRequest`` detail holding one field violation per
broken rule (field path, description). Every message of a request stream is checked as the
controller reads it: the first invalid one ends the call the same way.

A method whose request message carries no rule (nor the messages it holds) is left out of the
chain: it pays nothing. With ``VALIDATION["RESPONSES"]`` on (for tests), the replies are checked
too; a reply that breaks its rules is a bug of the service, answered INTERNAL and logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from microframe.conf import dict_setting
from microframe.contrib.validation.rules import MessageValidator, Violation, validator_for
from microframe.core.context import RequestContext
from microframe.core.error_details import bad_request
from microframe.core.exceptions import InvalidArgument, MiddlewareNotUsed, RpcError
from microframe.core.middleware import Handler
from microframe.core.router import Route

__all__ = ["ValidationMiddleware", "invalid_argument"]

INTERNAL_MESSAGE = "internal error"


def invalid_argument(name: str, violations: list[Violation]) -> InvalidArgument:
    """The INVALID_ARGUMENT answer to a ``name`` message with ``violations``."""
    first = violations[0]
    where = f"{first.field}: " if first.field else ""
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(
        f"invalid {name}: {where}{first.message}{more}",
        details=(bad_request((v.field, v.message) for v in violations),),
    )


class ValidationMiddleware:
    """Validate requests (and, with ``VALIDATION["RESPONSES"]``, replies) against their
    protovalidate rules; see the module docstring."""

    def __init__(self, next: Handler, *, route: Route) -> None:
        config = dict_setting("VALIDATION")
        requests = validator_for(route.request_class.DESCRIPTOR)
        responses = (
            validator_for(route.response_class.DESCRIPTOR) if config.get("RESPONSES") else None
        )
        if requests is None and responses is None:
            raise MiddlewareNotUsed
        self.next = next
        self.requests: MessageValidator | None = requests
        self.responses: MessageValidator | None = responses
        self.request_name = route.request_class.DESCRIPTOR.name
        self.response_name = route.response_class.DESCRIPTOR.name
        self.client_streaming = route.kind.client_streaming
        self.server_streaming = route.kind.server_streaming

    async def __call__(self, ctx: RequestContext, request: Any) -> Any:
        requests = self.requests
        if requests is not None:
            if self.client_streaming:
                request = self._checked_requests(ctx, request, requests)
            else:
                violations = requests.violations(request)
                if violations:
                    raise self._refusal(ctx, violations)
        response = await self.next(ctx, request)
        responses = self.responses
        if responses is None:
            return response
        if self.server_streaming:
            return self._checked_replies(ctx, response, responses)
        self._check_reply(ctx, response, responses)
        return response

    def _refusal(self, ctx: RequestContext, violations: list[Violation]) -> RpcError:
        error = invalid_argument(self.request_name, violations)
        ctx.logger.info("%s: %s", ctx.full_method, error.message)
        return error

    async def _checked_requests(
        self, ctx: RequestContext, stream: AsyncIterator[Any], validator: MessageValidator
    ) -> AsyncIterator[Any]:
        async for message in stream:
            violations = validator.violations(message)
            if violations:
                raise self._refusal(ctx, violations)
            yield message

    def _check_reply(self, ctx: RequestContext, reply: Any, validator: MessageValidator) -> None:
        violations = validator.violations(reply)
        if violations:
            ctx.logger.error(
                "%s answered an invalid %s (VALIDATION[\"RESPONSES\"]): %s",
                ctx.full_method, self.response_name,
                "; ".join(f"{v.field or '.'}: {v.message} [{v.rule_id}]" for v in violations),
            )
            from microframe.core.exceptions import Internal

            raise Internal(INTERNAL_MESSAGE)

    async def _checked_replies(
        self, ctx: RequestContext, stream: AsyncIterator[Any], validator: MessageValidator
    ) -> AsyncIterator[Any]:
        async for reply in stream:
            self._check_reply(ctx, reply, validator)
            yield reply
