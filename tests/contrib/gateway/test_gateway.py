"""The HTTP/JSON gateway: a real gunicorn in front of a real service, over real HTTP.

The service (``shop``) is made as a user makes one: ``startservice``, a proto with
``google.api.http`` annotations, controllers, ``genproto``; then ``runserver`` and
``gunicorn shop.wsgi`` from its directory.
"""

from __future__ import annotations

import json

import pytest

from support.polling import wait_until
from support.shop import Shop

pytestmark = pytest.mark.timeout(180)


def ok_json(answer: tuple[int, dict[str, str], bytes]) -> object:
    status, headers, body = answer
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def test_every_rpc_answers_post_package_service_method(shop: Shop) -> None:
    assert ok_json(shop.post("/shop.Shop/SayHello", {"name": "Ada"})) == {"message": "Hello, Ada!"}
    # curl -d sends application/x-www-form-urlencoded: the body is read as JSON all the same.
    answer = shop.gateway.request("POST", "/shop.Shop/SayHello", '{"name": "Bo"}',
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ok_json(answer) == {"message": "Hello, Bo!"}
    assert ok_json(shop.post("/shop.Shop/SayHello", "")) == {"message": "Hello, !"}


def test_path_and_query_parameters_bind_to_fields(shop: Shop) -> None:
    echo = ok_json(shop.get("/v1/shelves/sci%20fi/books?q=dune&limit=5&in_stock=true&tags=a&tags=b&page.size=20"))
    assert json.loads(echo["json"]) == {  # type: ignore[index]
        "shelf": "sci fi", "q": "dune", "limit": 5, "in_stock": True, "tags": ["a", "b"], "page": {"size": 20},
    }
    camel = ok_json(shop.get("/v1/shelves/s/books?inStock=1&limit=3"))
    assert json.loads(camel["json"]) == {"shelf": "s", "in_stock": True, "limit": 3}  # type: ignore[index]
    assert ok_json(shop.get("/v1/hello/Cy")) == {"message": "Hello, Cy!"}
    # Path parameters are percent-decoded as UTF-8, and %2F stays inside its segment.
    assert ok_json(shop.get("/v1/hello/Zo%C3%AB")) == {"message": "Hello, Zoë!"}
    assert ok_json(shop.get("/v1/hello/a%2Fb")) == {"message": "Hello, a/b!"}
    status, _, body = shop.get("/v1/hello/%FF")
    assert status == 400 and json.loads(body)["status"] == "INVALID_ARGUMENT"
    status, _, body = shop.get("/v1/hello/ada?name=%FF")  # in the query: the same
    assert status == 400 and "not UTF-8" in json.loads(body)["message"], body


def test_response_body_answers_one_field_of_the_reply(shop: Shop) -> None:
    assert ok_json(shop.get("/v1/title/rivers")) == "On rivers"
    assert ok_json(shop.get("/v1/pages/rivers")) == "300"  # int64: a string in JSON
    assert ok_json(shop.get("/v1/pages/empty")) == "0"


def test_body_field_multi_segment_variables_and_custom_verbs(shop: Shop) -> None:
    book = ok_json(shop.post("/v1/shelves/poetry/books", {"title": "Odes", "pages": "120"}))
    assert book == {"id": "b1", "title": "poetry: Odes", "pages": "120"}
    put = shop.gateway.request("PUT", "/v1/shelves/poetry/books/b7", json.dumps({"title": "Ars"}))
    assert ok_json(put) == {"id": "b7", "title": "poetry: Ars"}
    published = ok_json(shop.post("/v1/shelves/s1/books/b2:publish", {"when": "now"}))
    assert json.loads(published["json"]) == {"name": "shelves/s1/books/b2", "when": "now"}  # type: ignore[index]


def test_server_streams_are_newline_delimited_json(shop: Shop) -> None:
    status, headers, body = shop.get("/v1/count/4")
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in body.splitlines()] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    # An error before the first reply is the answer's status; after it, the stream's last line.
    status, _, body = shop.get("/v1/count/500")
    assert status == 400 and json.loads(body)["status"] == "INVALID_ARGUMENT"
    status, _, body = shop.get("/v1/count/13")
    lines = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and lines[:2] == [{"n": 1}, {"n": 2}]
    assert lines[2] == {"error": {"code": 10, "status": "ABORTED", "message": "unlucky"}}
    # The error line carries the error's details.
    status, _, body = shop.get("/v1/count/14")
    lines = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and lines[:2] == [{"n": 1}, {"n": 2}]
    assert lines[2] == {"error": {"code": 10, "status": "ABORTED", "message": "conflict", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "COUNT_CONFLICT",
         "domain": "shop.example.com", "metadata": {"at": "3"}}]}}


def test_a_client_hanging_up_cancels_the_server_stream(shop: Shop) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", shop.gateway.port, timeout=10)
    connection.request("GET", "/v1/count/99")
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.readline()) == {"n": 1}
    connection.close()  # 98 replies and about 5 s of streaming to go

    def cancelled() -> bool:
        text = shop.server.metrics_text()
        return any('grpc_method="Count"' in line and 'grpc_code="CANCELLED"' in line and not line.endswith(" 0.0")
                   for line in text.splitlines() if line.startswith("grpc_server_handled_total"))

    wait_until(cancelled, 4, "the server to see the call cancelled")


def test_client_streams_take_a_json_array(shop: Shop) -> None:
    assert ok_json(shop.post("/shop.Shop/Sum", [{"value": 2}, {"value": "40"}])) == {"value": "42"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/shop.Shop/SayHello", {"name": "bad"}, 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/shelves/missing/books", {"title": "x"}, 404, "NOT_FOUND"),
        ("POST", "/shop.Shop/SayHello", '{"name": ', 400, "INVALID_ARGUMENT"),
        ("POST", "/shop.Shop/SayHello", {"nmae": "x"}, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/shelves/s/books?limit=many", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/v1/shelves/s/books?nosuch=1", None, 400, "INVALID_ARGUMENT"),
        ("GET", "/no/such/route", None, 404, "NOT_FOUND"),
        ("DELETE", "/v1/hello/x", None, 405, "UNIMPLEMENTED"),
    ],
)
def test_errors_map_to_http_statuses_with_a_json_body(shop: Shop, method: str, path: str, body: object,
                                                      status: int, code: str) -> None:
    data = None if body is None else body if isinstance(body, str) else json.dumps(body)
    got, headers, answer = shop.gateway.request(method, path, data)
    assert got == status, answer
    assert headers["content-type"] == "application/json"
    error = json.loads(answer)
    assert error["status"] == code and isinstance(error["code"], int) and error["message"]


def test_resource_exhausted_is_429_with_retry_after(shop: Shop) -> None:
    status, headers, body = shop.post("/shop.Shop/SayHello", {"name": "busy"})
    assert status == 429 and headers["retry-after"] == "2"  # 1.250 s: HTTP wants whole seconds
    assert json.loads(body) == {"code": 8, "status": "RESOURCE_EXHAUSTED", "message": "try later"}


def test_the_body_limit_is_enforced(shop: Shop) -> None:
    status, _, body = shop.post("/shop.Shop/SayHello", {"name": "x" * 300_001})
    assert status == 413 and json.loads(body)["status"] == "RESOURCE_EXHAUSTED"
    assert ok_json(shop.post("/shop.Shop/SayHello", {"name": "x" * 1000}))


def test_selected_headers_pass_as_metadata(shop: Shop) -> None:
    def seen(key: str, headers: dict[str, str]) -> str:
        return ok_json(shop.post("/shop.Shop/SayHello", {"name": f"md:{key}"}, headers=headers))["message"]  # type: ignore[index]

    assert seen("authorization", {"Authorization": "Bearer t0k"}) == "'Bearer t0k'"
    assert seen("x-tenant", {"Grpc-Metadata-X-Tenant": "acme"}) == "'acme'"
    assert seen("x-secret", {"X-Secret": "no"}) == "None"  # not in FORWARD_HEADERS
    # Metadata that travels (microframe.core.propagation) passes under its own headers.
    assert seen("x-md-global-tenant", {"X-Md-Global-Tenant": "acme"}) == "'acme'"
    assert seen("x-md-local-note", {"X-Md-Local-Note": "hop"}) == "'hop'"
    assert seen("x-forwarded-for", {}) == "'127.0.0.1'"


def test_metadata_headers_must_be_what_grpc_can_carry(shop: Shop) -> None:
    answer = shop.post("/shop.Shop/SayHello", {"name": "md:trace-bin"}, headers={"Grpc-Metadata-Trace-Bin": "AAEC"})
    assert ok_json(answer) == {"message": "b'\\x00\\x01\\x02'"}
    status, _, body = shop.post("/shop.Shop/SayHello", {"name": "x"}, headers={"Grpc-Metadata-Trace-Bin": "not base64!"})
    assert status == 400 and "base64" in json.loads(body)["message"]
    status, _, body = shop.post("/shop.Shop/SayHello", {"name": "x"}, headers={"X-Request-Id": "caf\u00e9"})
    assert status == 400 and "printable ASCII" in json.loads(body)["message"]


def test_credentials_pass_only_under_their_forwarded_header() -> None:
    from microframe.contrib.gateway import GatewayApplication

    app = GatewayApplication(routes=[], options={"FORWARD_HEADERS": ["x-request-id"]})
    environ = {"HTTP_GRPC_METADATA_AUTHORIZATION": "Bearer sneaky", "HTTP_GRPC_METADATA_X_TENANT": "acme",
               "HTTP_AUTHORIZATION": "Bearer t", "HTTP_X_REQUEST_ID": "r1", "REMOTE_ADDR": "10.0.0.9"}
    assert sorted(app._metadata(environ)) == [("x-forwarded-for", "10.0.0.9"), ("x-request-id", "r1"), ("x-tenant", "acme")]
    # Forwarded or not, a credential never comes from Grpc-Metadata-*, nor does a forwarded header.
    app = GatewayApplication(routes=[], options={"FORWARD_HEADERS": ["authorization", "x-request-id"]})
    environ["HTTP_GRPC_METADATA_X_REQUEST_ID"] = "forged"
    assert sorted(app._metadata(environ)) == [("authorization", "Bearer t"), ("x-forwarded-for", "10.0.0.9"),
                                              ("x-request-id", "r1"), ("x-tenant", "acme")]
    # What any WSGI server may pass: keys gRPC reserves, or cannot carry, are refused (400).
    from microframe.contrib.gateway.app import HttpError

    for key in ("HTTP_GRPC_METADATA_:PATH", "HTTP_GRPC_METADATA_GRPC_STATUS", "HTTP_GRPC_METADATA_TE", "HTTP_GRPC_METADATA_A B"):
        with pytest.raises(HttpError) as info:
            app._metadata({key: "x"})
        assert info.value.http_status == 400, key


def test_healthz_follows_the_service(shop: Shop) -> None:
    assert ok_json(shop.get("/healthz")) == {"status": "SERVING"}
    status, headers, _ = shop.gateway.request("DELETE", "/healthz")
    assert status == 405 and headers["allow"] == "GET, HEAD"


# Hostile HTTP callers (docs/topics/security.md) -------------------------------------------------


def test_grpc_metadata_headers_cannot_carry_credentials_or_forwarded_headers(shop: Shop) -> None:
    """Row 6: Grpc-Metadata-Authorization beside a wrong (or no) Authorization."""
    def seen(key: str, headers: dict[str, str]) -> str:
        return ok_json(shop.post("/shop.Shop/SayHello", {"name": f"md:{key}"}, headers=headers))["message"]  # type: ignore[index]

    assert seen("authorization", {"Authorization": "Bearer wrong", "Grpc-Metadata-Authorization": "Bearer valid"}) \
        == "'Bearer wrong'"
    assert seen("authorization", {"Grpc-Metadata-Authorization": "Bearer valid"}) == "None"
    assert seen("x-request-id", {"X-Request-Id": "real", "Grpc-Metadata-X-Request-Id": "forged"}) == "'real'"
    assert seen("cookie", {"Grpc-Metadata-Cookie": "session=1"}) == "None"


def test_client_stream_arrays_are_capped(shop: Shop) -> None:
    """Row 10: a JSON array of more requests than MAX_STREAM_MESSAGES, to a client stream."""
    import time

    cap = 100  # the shop's MAX_STREAM_MESSAGES
    started = time.monotonic()
    status, _, body = shop.gateway.request("POST", "/shop.Shop/Sum", "[" + ",".join(["{}"] * (cap + 1)) + "]")
    assert status == 413 and json.loads(body)["status"] == "RESOURCE_EXHAUSTED", body
    assert time.monotonic() - started < 2
    assert ok_json(shop.post("/shop.Shop/Sum", [{"value": 1}] * cap)) == {"value": str(cap)}


def test_downstream_errors_do_not_reach_http_callers(shop: Shop) -> None:
    """Row 11: the error of a call the service made (naming a service and its address)."""
    status, _, body = shop.post("/shop.Shop/SayHello", {"name": "downstream"})
    error = json.loads(body)
    assert status == 503 and error["status"] == "UNAVAILABLE", body
    assert "payments" not in body.decode() and "127.0.0.1" not in body.decode(), body
    # The service's own errors for the caller pass unchanged.
    status, _, body = shop.post("/shop.Shop/SayHello", {"name": "bad"})
    assert status == 400 and json.loads(body)["message"] == "bad name"
    wait_until(lambda: "cannot connect to payments" in shop.gateway.output, 5, "the gateway to log the real error")
    # Of the details of such an error, only its RetryInfo passes (and gives Retry-After).
    status, headers, body = shop.post("/shop.Shop/SayHello", {"name": "db-down"})
    assert status == 503 and headers["retry-after"] == "3", body
    assert json.loads(body) == {
        "code": 14, "status": "UNAVAILABLE", "message": "the service is unavailable; try again later",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.500s"}],
    }


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("[" * 100_000 + "]" * 100_000, {}),
        ('{"a":' * 40_000 + '1' + "}" * 40_000, {}),
        ({"name": "x"}, {"Grpc-Metadata-:path": "/other.Service/Method"}),
        ({"name": "x"}, {"Grpc-Metadata-Grpc-Timeout": "1S"}),
        ({"name": "x"}, {"Grpc-Metadata-Te": "gzip"}),
    ],
    ids=["arrays-100000-deep", "objects-40000-deep", "metadata-:path", "metadata-grpc-timeout", "metadata-te"],
)
def test_malformed_input_is_400_never_500(shop: Shop, body: object, headers: dict[str, str]) -> None:
    """Row 12: JSON nested 100,000 deep, headers that are not metadata."""
    import socket

    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    before = shop.gateway.output.count("Traceback")
    # A raw request: http.client refuses to send some of these headers.
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST /shop.Shop/SayHello HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
               f"Connection: close\r\n{head}\r\n").encode() + data
    with socket.create_connection(("127.0.0.1", shop.gateway.port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    status, answer = int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]
    assert status == 400 and json.loads(answer)["status"] == "INVALID_ARGUMENT", answer
    assert shop.gateway.output.count("Traceback") == before, shop.gateway.output[-3000:]
