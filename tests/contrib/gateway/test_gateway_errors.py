"""The errors of a service through the gateway: the google.rpc.Status JSON mapping, details
included, and Retry-After from a RetryInfo; a real gunicorn in front of the real orders service
(validation rules in its proto, a declared error, a tight limit on Refund)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from microframe.core.error_details import retry_info
from microframe.core.exceptions import ResourceExhausted

from support.env import ROOT, TESTS, base_env
from support.servers import GunicornProcess, ServerProcess

pytestmark = pytest.mark.timeout(120)

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"

SETTINGS = """from orders.settings import *

# One call of Refund every 10 s: the second call in a row is refused, with a RetryInfo.
LIMITER = {"METHODS": {"/orders.v1.Orders/Refund": {"OPTIONS": {"rate": 0.1, "burst": 1}}}}
GATEWAY = {"TIMEOUT": 5.0}
"""

GUNICORN_CONF = """import os

from microframe.contrib.gateway.gunicorn_conf import *  # noqa: F403

bind = os.environ["GATEWAY_BIND"]
workers = int(os.environ["GATEWAY_WORKERS"])
threads = 4
"""


class Orders:
    """The orders service (``runserver``) and its gateway (``gunicorn ordersgw.wsgi``)."""

    def __init__(self, tmp: Path) -> None:
        package = tmp / "ordersgw"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "settings.py").write_text(SETTINGS)
        env = {"PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT), str(TESTS)])}
        self.server = ServerProcess(tmp, settings="ordersgw.settings", env=env).wait_serving()
        (package / "wsgi.py").write_text(
            "import os\n\n"
            'os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "ordersgw.settings")\n\n'
            "from microframe.contrib.gateway import get_wsgi_application  # noqa: E402\n\n"
            f"application = get_wsgi_application(address={self.server.address!r})\n"
        )
        (tmp / "gunicorn.conf.py").write_text(GUNICORN_CONF)
        try:
            self.gateway = GunicornProcess(tmp, "ordersgw.wsgi", base_env(**env)).wait_healthy()
        except BaseException:
            self.server.kill()
            raise

    def post(self, method: str, body: object) -> tuple[int, dict[str, str], dict]:
        status, headers, answer = self.gateway.request("POST", f"/orders.v1.Orders/{method}", json.dumps(body))
        assert headers["content-type"] == "application/json", answer
        return status, headers, json.loads(answer)

    def close(self) -> None:
        self.gateway.kill()
        self.server.kill()


@pytest.fixture(scope="module")
def orders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orders]:
    service = Orders(tmp_path_factory.mktemp("gateway-errors"))
    yield service
    service.close()


def test_an_invalid_request_is_400_with_its_bad_request(orders: Orders) -> None:
    status, headers, body = orders.post("Create", {"customer": "", "lines": [{"sku": "a", "quantity": 0}]})
    assert status == 400, body
    assert body == {
        "code": 3,
        "status": "INVALID_ARGUMENT",
        "message": "invalid CreateOrder: customer: must be at least 1 characters (and 1 more)",
        "details": [{
            "@type": BAD_REQUEST,
            "fieldViolations": [
                {"field": "customer", "description": "must be at least 1 characters"},
                {"field": "lines[0].quantity", "description": "must be greater than 0 and less than or equal to 1000"},
            ],
        }],
    }
    assert "retry-after" not in headers
    # The valid request goes through.
    status, _, body = orders.post("Create", {"customer": "ann", "lines": [{"sku": "a", "quantity": 1}]})
    assert (status, body) == (200, {"id": "o-1", "customer": "ann", "lines": 1})


def test_a_declared_error_carries_its_error_info(orders: Orders) -> None:
    status, headers, body = orders.post("Get", {"id": "o-9"})
    assert status == 404, body
    assert body == {
        "code": 5,
        "status": "NOT_FOUND",
        "message": "no order 'o-9'",
        "details": [{
            "@type": ERROR_INFO,
            "reason": "ORDER_NOT_FOUND",
            "domain": "orders.example.com",
            "metadata": {"order_id": "o-9"},
        }],
    }
    assert "retry-after" not in headers


def test_the_limiters_refusal_is_429_with_retry_after_from_its_retry_info(orders: Orders) -> None:
    refund = {"orderId": "o-1", "amount": "1", "paid": "5"}
    status, _, body = orders.post("Refund", refund)
    assert status == 200, body
    status, headers, body = orders.post("Refund", refund)
    assert status == 429, body
    assert body["code"] == 8 and body["status"] == "RESOURCE_EXHAUSTED"
    assert body["message"] == "rate limit of /orders.v1.Orders/Refund exceeded"
    (detail,) = body["details"]
    assert detail["@type"] == RETRY_INFO
    delay = float(detail["retryDelay"].removesuffix("s"))
    assert 0 < delay <= 10
    assert headers["retry-after"] == str(math.ceil(delay))  # whole seconds, rounded up


def test_retry_after_prefers_the_retry_info_and_is_at_least_one_second() -> None:
    from microframe.contrib.gateway.app import retry_after

    both = ResourceExhausted("busy", trailers=(("retry-after", "30.000"),), details=(retry_info(0.2),))
    assert retry_after(both, both.details) == "1"
    trailer = ResourceExhausted("busy", trailers=(("retry-after", "2.001"),))
    assert retry_after(trailer, trailer.details) == "3"
    assert retry_after(ResourceExhausted("busy"), ()) is None


def test_errors_of_the_gateway_itself_keep_their_body(orders: Orders) -> None:
    status, _, answer = orders.gateway.request("POST", "/orders.v1.Orders/Create", '{"customer": ')
    assert status == 400 and set(json.loads(answer)) == {"code", "status", "message"}
    status, _, answer = orders.gateway.request("GET", "/no/such/route")
    assert status == 404 and json.loads(answer) == {
        "code": grpc.StatusCode.NOT_FOUND.value[0], "status": "NOT_FOUND", "message": "no RPC is served at /no/such/route",
    }
