"""What the gateway offers browsers and API consumers, over real HTTP to a real gunicorn: the
OpenAPI 3.1 document (checked by an independent validator, and against what the gateway really
answers), CORS, and gRPC-Web (read frame by frame as the protocol lays them out)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import subprocess
import sys
import threading

import pytest
from google.rpc import error_details_pb2, status_pb2

from support.shop import ORIGIN, Shop

pytestmark = pytest.mark.timeout(180)


# -- OpenAPI ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec(shop: Shop) -> dict:
    status, headers, body = shop.get("/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    return json.loads(body)


def test_the_spec_is_valid_openapi_3_1(spec: dict) -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV31SpecValidator

    assert spec["openapi"] == "3.1.0"
    validate(spec, cls=OpenAPIV31SpecValidator)


def test_the_spec_has_every_route_the_proto_declares(spec: dict) -> None:
    routes = {(verb, path) for path, item in spec["paths"].items() for verb in item}
    annotated = {
        ("get", "/v1/hello/{name}"), ("get", "/v1/shelves/{shelf}/books"),
        ("post", "/v1/shelves/{shelf}/books"), ("put", "/v1/shelves/{shelf}/books/{book.id}"),
        ("post", "/v1/{name}:publish"), ("get", "/v1/count/{to}"), ("post", "/v1/entries/{id}"),
        ("get", "/v1/title/{name}"), ("get", "/v1/pages/{name}"),
    }
    defaults = {("post", f"/shop.Shop/{m}") for m in
                ("SayHello", "Search", "CreateBook", "Publish", "Count", "Sum", "Describe", "Title")}
    assert routes == annotated | defaults
    ops = spec["paths"]["/v1/shelves/{shelf}/books"]
    assert ops["post"]["operationId"] == "Shop_CreateBook"
    assert spec["paths"]["/v1/shelves/{shelf}/books/{book.id}"]["put"]["operationId"] == "Shop_CreateBook2"
    # Comments are the descriptions: the first line the summary, the rest the description.
    hello = spec["paths"]["/v1/hello/{name}"]["get"]
    assert hello["summary"] == "Greets the caller by name."
    assert hello["description"] == "The name is the last segment of the path."
    assert spec["tags"] == [{"name": "Shop", "description": "A bookshop: greetings, books, counters."}]


def test_parameters_follow_the_http_rule(spec: dict) -> None:
    search = spec["paths"]["/v1/shelves/{shelf}/books"]["get"]
    params = {(p["name"], p["in"]): p for p in search["parameters"]}
    assert set(params) == {("shelf", "path"), ("q", "query"), ("limit", "query"),
                           ("inStock", "query"), ("tags", "query"), ("page.size", "query")}
    assert params[("tags", "query")]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert "requestBody" not in search
    # body: "book": the body is the field, the rest of the request the path and the query.
    create = spec["paths"]["/v1/shelves/{shelf}/books"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/shop.Book"}
    assert [p["name"] for p in create["parameters"]] == ["shelf"]
    # body "*" with a path variable: the body is the request without it.
    describe = spec["paths"]["/v1/entries/{id}"]["post"]
    body = describe["requestBody"]["content"]["application/json"]["schema"]
    assert "id" not in body["properties"] and "kind" in body["properties"]
    # A client stream takes an array; a server stream answers NDJSON.
    sum_body = spec["paths"]["/shop.Shop/Sum"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert sum_body["type"] == "array"
    count = spec["paths"]["/v1/count/{to}"]["get"]["responses"]["200"]["content"]
    assert list(count) == ["application/x-ndjson"]
    # response_body: one field of the reply (int64: a string).
    pages = spec["paths"]["/v1/pages/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert pages["schema"] == {"type": "string", "format": "int64"}


def test_schemas_follow_the_json_mapping(spec: dict) -> None:
    schemas = spec["components"]["schemas"]
    entry = schemas["shop.Entry"]["properties"]
    assert entry["big"] == {"type": "string", "format": "int64"}
    assert entry["kind"] == {"$ref": "#/components/schemas/shop.Kind"}
    assert schemas["shop.Kind"]["anyOf"][0]["enum"] == ["KIND_UNSPECIFIED", "BOOK", "MAGAZINE"]
    assert "BOOK: A printed book." in schemas["shop.Kind"]["description"]
    assert entry["created"] == {"type": "string", "format": "date-time"}
    assert entry["counts"]["additionalProperties"] == {"type": "integer", "format": "int32"}
    assert entry["children"]["items"] == {"$ref": "#/components/schemas/shop.Entry"}
    assert entry["maybe"]["type"] == ["integer", "null"]
    assert entry["etag"]["readOnly"] is True
    # REQUIRED is said, not enforced by the schema: a reply leaves a field at its default out.
    assert "required" not in schemas["shop.Entry"]
    assert entry["id"]["description"].startswith("Required: a request must set it")
    assert schemas["shop.Entry"]["not"] == {"anyOf": [{"required": ["person", "team"]}]}
    # Every operation answers the error body under the gateway's statuses and by default.
    for item in spec["paths"].values():
        for operation in item.values():
            responses = operation["responses"]
            assert {"200", "400", "503", "504", "429", "default"} <= set(responses)
            assert responses["default"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/google.rpc.Status"}


def _validator(spec: dict, schema: dict):
    """A JSON Schema 2020-12 validator of ``schema``, its ``#/components/...`` references
    resolved in ``spec``."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**schema, "components": spec["components"]})


def test_the_gateway_answers_what_the_spec_says(shop: Shop, spec: dict) -> None:
    entry = {"kind": "BOOK", "big": "9007199254740993", "small": 7, "ratio": 0.5,
             "blob": base64.b64encode(b"\x00\xff").decode(), "tags": ["a", "b"],
             "counts": {"x": 1}, "created": "2026-12-02T10:00:00Z", "ttl": "1.5s",
             "extra": {"k": [1, "v"]}, "maybe": 3, "team": "12", "page": {"size": 2},
             "children": [{"id": "c1", "kind": "MAGAZINE"}], "draft": True}
    operation = spec["paths"]["/v1/entries/{id}"]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    _validator(spec, request_schema).validate(entry)
    status, _, body = shop.post("/v1/entries/e1", entry)
    assert status == 200, body
    reply = json.loads(body)
    assert reply["id"] == "e1" and reply["etag"] == "e-e1" and reply["big"] == "9007199254740993"
    _validator(spec, operation["responses"]["200"]["content"]["application/json"]["schema"]).validate(reply)
    # A value the schema refuses (two fields of a oneof) is refused by the service too.
    both = {**entry, "person": "ada"}
    assert not _validator(spec, request_schema).is_valid(both)
    assert shop.post("/v1/entries/e1", both)[0] == 400
    # Errors answer the Status schema.
    status, _, body = shop.post("/v1/shelves/missing/books", {"title": "x"})
    assert status == 404
    _validator(spec, operation["responses"]["default"]["content"]["application/json"]["schema"]).validate(json.loads(body))
    # Every path of the spec is served: a request to each with the parameters filled is routed
    # (no 404 "no RPC", no 405).
    samples = {"integer": "3", "string": "x"}
    for path, item in spec["paths"].items():
        for verb, op in item.items():
            concrete = path
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    value = samples.get(p["schema"].get("type"), "x")
                    if "pattern" in p["schema"]:  # several segments: each wildcard one word
                        value = p["schema"]["pattern"].strip("^$").replace("[^/]+", "x").replace(".*", "x")
                    concrete = concrete.replace("{" + p["name"] + "}", value)
            answer = shop.gateway.request(verb.upper(), concrete, b"{}" if "requestBody" in op else None)
            assert answer[0] not in (404, 405) or b"no RPC" not in answer[2], (verb, concrete, answer)


def test_genproto_writes_the_spec_the_gateway_serves(shop: Shop, spec: dict, tmp_path) -> None:
    target = tmp_path / "openapi.json"
    done = subprocess.run([sys.executable, "manage.py", "genproto", "--openapi", str(target)], cwd=shop.dir,
                          env=shop.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"operation(s) written to {target}" in done.stdout
    assert json.loads(target.read_text()) == spec
    # --check tells whether the file is current, for CI.
    check = [sys.executable, "manage.py", "genproto", "--check", "--openapi", str(target)]
    done = subprocess.run(check, cwd=shop.dir, env=shop.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"{target} is up to date." in done.stdout, done.stderr
    target.write_text(target.read_text().replace("Greets the caller", "Greeted the caller"))
    done = subprocess.run(check, cwd=shop.dir, env=shop.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"{target} is stale" in done.stderr
    # To standard output, for a pipe.
    done = subprocess.run([sys.executable, "manage.py", "genproto", "--openapi", "-"], cwd=shop.dir,
                          env=shop.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{"):]) == spec


def test_openapi_json_only_answers_get(shop: Shop) -> None:
    status, headers, _ = shop.post("/openapi.json", {})
    assert status == 405 and headers["allow"] == "GET, HEAD"


# -- CORS -------------------------------------------------------------------------------------


def _preflight(shop: Shop, origin: str, method: str = "POST", headers: str = "content-type") -> tuple[int, dict[str, str], bytes]:
    return shop.gateway.request("OPTIONS", "/v1/hello/ada", headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def test_a_preflight_from_an_allowed_origin_is_answered(shop: Shop) -> None:
    status, headers, body = _preflight(shop, ORIGIN, "GET", "content-type, x-grpc-web, grpc-timeout")
    assert status == 204 and body == b""
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(
        shop.gateway.url + "/v1/hello/ada", method="OPTIONS",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    ), timeout=10) as response:
        assert response.reason == "No Content"  # the status line's phrase, not "Error"
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "content-type, x-grpc-web, grpc-timeout"
    assert headers["access-control-max-age"] == "300"
    assert "access-control-allow-credentials" not in headers


def test_preflights_outside_the_policy_are_refused(shop: Shop) -> None:
    for origin, method, asked in (("https://evil.example.com", "GET", "content-type"),
                                  (ORIGIN, "TRACE", "content-type"),
                                  (ORIGIN, "POST", "x-secret")):
        status, headers, body = _preflight(shop, origin, method, asked)
        assert status == 403, (origin, method, asked)
        assert not any(k.startswith("access-control-") for k in headers)
        assert json.loads(body)["status"] == "PERMISSION_DENIED"


def test_answers_carry_cors_headers_for_allowed_origins_only(shop: Shop) -> None:
    status, headers, _ = shop.get("/v1/hello/ada", headers={"Origin": ORIGIN})
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    assert headers["vary"] == "Origin"
    assert "grpc-status" in headers["access-control-expose-headers"]
    # Errors too: a script must be able to read why its call failed.
    status, headers, _ = shop.post("/v1/shelves/missing/books", {}, headers={"Origin": ORIGIN})
    assert status == 404 and headers["access-control-allow-origin"] == ORIGIN
    for origin in ("https://evil.example.com", None):
        status, headers, _ = shop.get("/v1/hello/ada", headers={"Origin": origin} if origin else {})
        assert status == 200 and not any(k.startswith("access-control-") for k in headers)


def test_nothing_is_allowed_by_default_and_wildcards_with_credentials_are_flagged() -> None:
    from microframe.conf import global_settings
    from microframe.contrib.gateway.checks import _cors_messages
    from microframe.contrib.gateway.cors import Cors

    default = Cors(global_settings.GATEWAY["CORS"])
    environ = {"REQUEST_METHOD": "OPTIONS", "HTTP_ORIGIN": "https://a.example.com",
               "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "GET"}
    assert not default.enabled and default.answer_headers(environ) == []
    assert default.preflight(environ)[0] == 403
    flagged = _cors_messages({"ALLOW_ORIGINS": ["*"], "ALLOW_CREDENTIALS": True})
    assert [m.id for m in flagged] == ["gateway.W001"]
    assert _cors_messages({"ALLOW_ORIGINS": ["*"]}) == []
    assert [m.id for m in _cors_messages({"ALLOW_ORIGINS": ["app.example.com"]})] == ["gateway.E001"]


# -- gRPC-Web ---------------------------------------------------------------------------------


def _frame(message: bytes, flag: int = 0) -> bytes:
    return struct.pack(">BI", flag, len(message)) + message


def _nested(depth: int) -> bytes:
    """An Entry in JSON whose children nest ``depth`` deep (two JSON levels each)."""
    value: dict = {"id": "leaf"}
    for _ in range(depth):
        value = {"id": "x", "children": [value]}
    return json.dumps(value).encode()


def _read_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The messages and the trailers of a gRPC-Web answer's body."""
    messages, trailers, position = [], {}, 0
    while position < len(body):
        flag, length = struct.unpack_from(">BI", body, position)
        data = body[position + 5:position + 5 + length]
        assert len(data) == length, "a truncated frame"
        position += 5 + length
        if flag & 0x80:
            assert position == len(body), "the trailers are the last frame"
            for line in data.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key] = value.strip()
        else:
            messages.append(data)
    return messages, trailers


def _web(shop: Shop, method: str, *messages: bytes, kind: str = "application/grpc-web+proto",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], list[bytes], dict[str, str]]:
    body = b"".join(_frame(m) for m in messages)
    if "-text" in kind:
        body = base64.b64encode(body)
    status, answer_headers, answer = shop.gateway.request(
        "POST", f"/shop.Shop/{method}", body, headers={"Content-Type": kind, "X-Grpc-Web": "1", **(headers or {})})
    if "-text" in kind:
        answer = b"".join(base64.b64decode(chunk) for chunk in _base64_chunks(answer))
    frames, trailers = _read_frames(answer)
    return status, answer_headers, frames, trailers


def _base64_chunks(text: bytes) -> list[bytes]:
    """The padded base64 chunks of a -text answer (each frame is encoded on its own)."""
    chunks, start = [], 0
    for i in range(0, len(text), 4):
        if text[i:i + 4].endswith(b"="):
            chunks.append(text[start:i + 4])
            start = i + 4
    if start < len(text):
        chunks.append(text[start:])
    return chunks


def _shop_pb2(shop: Shop):
    import importlib.util

    spec = importlib.util.spec_from_file_location("shop_pb2_for_web", shop.dir / "generate" / "shop_pb2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pb(shop: Shop):
    return _shop_pb2(shop)


@pytest.mark.parametrize("kind", ["application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text"])
def test_grpc_web_unary(shop: Shop, pb, kind: str) -> None:
    status, headers, frames, trailers = _web(shop, "SayHello", pb.HelloRequest(name="Ada").SerializeToString(), kind=kind)
    assert status == 200
    assert headers["content-type"] == ("application/grpc-web-text+proto" if "text" in kind else "application/grpc-web+proto")
    assert [pb.HelloReply.FromString(f).message for f in frames] == ["Hello, Ada!"]
    assert trailers["grpc-status"] == "0"


def test_grpc_web_json_codec(shop: Shop) -> None:
    status, headers, frames, trailers = _web(shop, "SayHello", b'{"name": "Ada"}', kind="application/grpc-web+json")
    assert status == 200 and headers["content-type"] == "application/grpc-web+json"
    assert [json.loads(f) for f in frames] == [{"message": "Hello, Ada!"}] and trailers["grpc-status"] == "0"


def test_grpc_web_server_stream_and_an_error_with_details(shop: Shop, pb) -> None:
    _, _, frames, trailers = _web(shop, "Count", pb.CountRequest(to=3).SerializeToString())
    assert [pb.Tick.FromString(f).n for f in frames] == [1, 2, 3] and trailers["grpc-status"] == "0"
    # An error after two replies: the trailers say it, with its details.
    _, _, frames, trailers = _web(shop, "Count", pb.CountRequest(to=14).SerializeToString())
    assert [pb.Tick.FromString(f).n for f in frames] == [1, 2]
    assert trailers["grpc-status"] == "10" and trailers["grpc-message"] == "conflict"
    status = status_pb2.Status.FromString(base64.b64decode(trailers["grpc-status-details-bin"] + "=="))
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "COUNT_CONFLICT"
    # An error before any reply is a trailers-only answer: in the headers as well.
    http_status, headers, frames, trailers = _web(shop, "Count", pb.CountRequest(to=101).SerializeToString())
    assert http_status == 200 and frames == []
    assert headers["grpc-status"] == trailers["grpc-status"] == "3"
    assert trailers["grpc-message"] == "to must be at most 100"


def test_grpc_web_deadline_and_metadata_pass_on(shop: Shop, pb) -> None:
    _, _, frames, trailers = _web(shop, "Count", pb.CountRequest(to=99).SerializeToString(),
                                  headers={"grpc-timeout": "300m"})
    assert trailers["grpc-status"] == "4" and 0 < len(frames) < 99
    _, _, frames, _ = _web(shop, "SayHello", pb.HelloRequest(name="md:x-tenant").SerializeToString(),
                           headers={"X-Tenant": "acme"})
    assert pb.HelloReply.FromString(frames[0]).message == "'acme'"
    # Credentials not in FORWARD_HEADERS, and the browser's own headers, do not pass.
    _, _, frames, _ = _web(shop, "SayHello", pb.HelloRequest(name="md:cookie").SerializeToString(),
                           headers={"Cookie": "session=1"})
    assert pb.HelloReply.FromString(frames[0]).message == "None"


@pytest.mark.parametrize(("body", "code"), [
    (b"\x00\x00\x00\x00\x09abc", "3"),  # a frame longer than the body
    (b"\x01\x00\x00\x00\x01a", "12"),  # compressed
    (b"", "3"),  # no message for a unary call
], ids=["truncated", "compressed", "no-message"])
def test_grpc_web_bad_framing_is_refused(shop: Shop, body: bytes, code: str) -> None:
    status, headers, answer = shop.gateway.request("POST", "/shop.Shop/SayHello", body,
                                                   headers={"Content-Type": "application/grpc-web+proto"})
    assert status == 200 and headers["grpc-status"] == code
    assert _read_frames(answer)[1]["grpc-status"] == code


@pytest.mark.parametrize(("method", "body", "headers", "code"), [
    ("SayHello", _frame(b"x" * 400_000), {}, "8"),  # past MAX_BODY_BYTES (300,000 here)
    ("Sum", b"".join(_frame(b"\x08\x01") for _ in range(101)), {}, "8"),  # past MAX_STREAM_MESSAGES
    ("SayHello", b"%%%not base64", {"Content-Type": "application/grpc-web-text"}, "3"),
    ("SayHello", _frame(b""), {"grpc-timeout": "soon"}, "3"),
    ("SayHello", _frame(b"\xff\xff"), {}, "3"),  # no HelloRequest
    ("SayHello", b"Q", {"Content-Type": "application/grpc-web-text"}, "3"),  # 4n+1 characters
    ("SayHello", b"\x02\x00\x00\x00\x00", {}, "3"),  # a flag no request has
    ("Describe", _frame(_nested(40)), {"Content-Type": "application/grpc-web+json"}, "3"),  # past MAX_JSON_DEPTH
    ("SayHello", _frame(b""), {f"X-A{i}": "a" * 8000 for i in range(8)}, "8"),  # metadata
], ids=["body-too-big", "too-many-messages", "text-not-base64", "bad-grpc-timeout", "not-the-message",
        "text-4n+1", "unknown-flag", "json-too-deep", "metadata-too-big"])
def test_grpc_web_limits_hold(shop: Shop, method: str, body: bytes, headers: dict[str, str], code: str) -> None:
    status, answer_headers, answer = shop.gateway.request("POST", f"/shop.Shop/{method}", body, headers={
        "Content-Type": "application/grpc-web+proto", **headers})
    assert status == 200 and answer_headers["grpc-status"] == code, answer
    # The service was never called: the refusal is the gateway's, with its reason.
    assert answer_headers.get("grpc-message")


def test_grpc_web_unknown_methods_are_unimplemented(shop: Shop) -> None:
    status, headers, _ = shop.gateway.request("POST", "/shop.Shop/Nope", _frame(b""),
                                              headers={"Content-Type": "application/grpc-web"})
    assert status == 200 and headers["grpc-status"] == "12"


# -- what a hostile HTTP client cannot do ---------------------------------------------------


def _raw(shop: Shop, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection to the gateway; everything it answers until it closes."""
    host, port = shop.gateway.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_big_headers_cannot_end_other_callers_calls(shop: Shop) -> None:
    # Headers forwarded as metadata past what the service accepts would make it close the
    # gateway's connection to it, and every call on it: the gateway refuses them itself.
    lines: list[bytes] = []

    def victim() -> None:
        host, port = shop.gateway.url.split("//")[1].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=15)
        connection.request("GET", "/v1/count/98")
        answer = connection.getresponse()
        lines.extend(answer.read().splitlines())
        connection.close()

    thread = threading.Thread(target=victim)
    thread.start()
    try:
        big = {f"X-Md-Global-A{i}": "a" * 8000 for i in range(8)}
        for _ in range(3):
            status, headers, frames, trailers = _web(shop, "SayHello", b"", headers={f"X-A{i}": "a" * 8000 for i in range(8)})
            assert headers["grpc-status"] == "8" and "metadata" in headers["grpc-message"]
            status, _, body = shop.get("/v1/hello/ada", headers=big)
            assert status == 431 and json.loads(body)["status"] == "RESOURCE_EXHAUSTED"
    finally:
        thread.join(20)
    assert len(lines) == 98 and b"error" not in lines[-1], lines[-3:]


def test_requests_cannot_be_smuggled_or_oversized(shop: Shop) -> None:
    smuggled = b"GET /v1/hello/SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"5\r\nhello\r\n0\r\n\r\n" + smuggled
    answer = _raw(shop, b"POST /shop.Shop/SayHello HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 400") and b"SMUGGLED" not in answer
    # A head past MAX_HEADER_BYTES arriving in one piece is refused like one arriving slowly.
    answer = _raw(shop, b"GET /v1/hello/a HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    # A malformed chunked body of a gRPC-Web call is answered as gRPC-Web.
    answer = _raw(shop, b"POST /shop.Shop/SayHello HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc-web+proto\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b"grpc-status: 3" in answer


def test_answers_vary_by_origin_whoever_asks(shop: Shop) -> None:
    for headers in ({}, {"Origin": "https://evil.example.com"}, {"Origin": ORIGIN}):
        assert shop.get("/v1/hello/ada", headers=headers)[1]["vary"] == "Origin"
    assert _preflight(shop, "https://evil.example.com")[1]["vary"] == "Origin"


def test_unpadded_binary_metadata_is_taken(shop: Shop, pb) -> None:
    _, _, frames, _ = _web(shop, "SayHello", pb.HelloRequest(name="md:x-trace-bin").SerializeToString(),
                           headers={"X-Trace-Bin": "AAE"})
    assert pb.HelloReply.FromString(frames[0]).message == repr(b"\x00\x01")


def test_what_the_spec_says_of_streams_and_numbers_holds(shop: Shop, spec: dict) -> None:
    count = spec["paths"]["/v1/count/{to}"]["get"]["responses"]["200"]["content"]["application/x-ndjson"]["schema"]
    _, _, body = shop.get("/v1/count/14")
    for line in body.splitlines():  # two replies, then the error line
        _validator(spec, count).validate(json.loads(line))
    describe = spec["paths"]["/v1/entries/{id}"]["post"]
    status, _, body = shop.post("/v1/entries/e2", {"ratio": "NaN", "kind": 7})
    assert status == 200
    reply = json.loads(body)
    assert reply["ratio"] == "NaN" and reply["kind"] == 7
    _validator(spec, describe["responses"]["200"]["content"]["application/json"]["schema"]).validate(reply)
