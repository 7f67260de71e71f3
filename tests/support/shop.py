"""``shop``: a service made as a user makes one (``startservice``, a proto with
``google.api.http`` annotations, controllers, ``genproto``), served by ``runserver`` with a
real gunicorn gateway in front: what the gateway tests call over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.env import ROOT
from support.servers import GunicornProcess, ServerProcess

PROTO = """syntax = "proto3";

package shop;

import "google/api/annotations.proto";
import "google/api/field_behavior.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// A bookshop: greetings, books, counters.
service Shop {
  // Greets the caller by name.
  //
  // The name is the last segment of the path.
  rpc SayHello (HelloRequest) returns (HelloReply) {
    option (google.api.http) = { get: "/v1/hello/{name}" };
  }
  rpc Search (SearchRequest) returns (Echo) {
    option (google.api.http) = { get: "/v1/shelves/{shelf}/books" };
  }
  rpc CreateBook (CreateBookRequest) returns (Book) {
    option (google.api.http) = {
      post: "/v1/shelves/{shelf}/books"
      body: "book"
      additional_bindings { put: "/v1/shelves/{shelf}/books/{book.id}" body: "book" }
    };
  }
  rpc Publish (PublishRequest) returns (Echo) {
    option (google.api.http) = { post: "/v1/{name=shelves/*/books/*}:publish" body: "*" };
  }
  rpc Count (CountRequest) returns (stream Tick) {
    option (google.api.http) = { get: "/v1/count/{to}" };
  }
  rpc Sum (stream Number) returns (Number);
  // Answers the entry it was given, as the service read it.
  rpc Describe (Entry) returns (Entry) {
    option (google.api.http) = { post: "/v1/entries/{id}" body: "*" };
  }
  rpc Title (HelloRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/title/{name}"
      response_body: "title"
      additional_bindings { get: "/v1/pages/{name}" response_body: "pages" }
    };
  }
}

message HelloRequest { string name = 1; }
message HelloReply { string message = 1; }
message SearchRequest {
  string shelf = 1;
  string q = 2;
  int32 limit = 3;
  bool in_stock = 4;
  repeated string tags = 5;
  Page page = 6;
}
message Page { int32 size = 1; }
message Echo { string json = 1; }
message Book { string id = 1; string title = 2; int64 pages = 3; }
message CreateBookRequest { string shelf = 1; Book book = 2; }
message PublishRequest { string name = 1; string when = 2; }
message CountRequest { uint32 to = 1; }
message Tick { uint32 n = 1; }
message Number { int64 value = 1; }

// Everything the JSON mapping has a rule for.
message Entry {
  // The entry's id.
  string id = 1 [(google.api.field_behavior) = REQUIRED];
  Kind kind = 2;
  int64 big = 3;
  uint32 small = 4;
  double ratio = 5;
  bytes blob = 6;
  repeated string tags = 7;
  map<string, int32> counts = 8;
  google.protobuf.Timestamp created = 9;
  google.protobuf.Duration ttl = 10;
  google.protobuf.Struct extra = 11;
  google.protobuf.Int32Value maybe = 12;
  oneof owner {
    string person = 13;
    uint64 team = 14;
  }
  Page page = 15;
  repeated Entry children = 16;
  optional bool draft = 17;
  string etag = 18 [(google.api.field_behavior) = OUTPUT_ONLY];
}

// The kinds of entry.
enum Kind {
  KIND_UNSPECIFIED = 0;
  // A printed book.
  BOOK = 1;
  MAGAZINE = 2;
}
"""

CONTROLLER = '''"""Controllers of shop.Shop, for the gateway tests."""

import asyncio
import json

from google.protobuf.json_format import MessageToDict

from microframe import Aborted, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from microframe.core.error_details import error_info, retry_info

from shop.generate.shop_pb2 import Book, Echo, HelloReply, Number, Tick


def _echo(request):
    return Echo(json=json.dumps(MessageToDict(request, preserving_proto_field_name=True), sort_keys=True))


async def say_hello(ctx, request):
    if request.name.startswith("md:"):
        return HelloReply(message=repr(ctx.metadata.get(request.name[3:])))
    if request.name == "busy":
        raise ResourceExhausted("try later", trailers={"retry-after": "1.250"})
    if request.name == "bad":
        raise InvalidArgument("bad name")
    if request.name == "db-down":  # details that name internals, beside a RetryInfo
        raise Unavailable("db at 10.0.3.7 is down", details=[
            error_info("DB_DOWN", "internal.shop", {"host": "10.0.3.7"}), retry_info(2.5)])
    if request.name == "downstream":  # a call to a service that is down, its error let through
        from microframe.client import Client

        await Client("payments", address="127.0.0.1:1").unary("/payments.Payments/Pay", request, HelloReply, timeout=2)
    return HelloReply(message=f"Hello, {request.name}!")


async def search(ctx, request):
    return _echo(request)


async def create_book(ctx, request):
    if request.shelf == "missing":
        raise NotFound(f"no shelf {request.shelf}")
    return Book(id=request.book.id or "b1", title=f"{request.shelf}: {request.book.title}", pages=request.book.pages)


async def publish(ctx, request):
    return _echo(request)


async def count(ctx, request):
    if request.to > 100:
        raise InvalidArgument("to must be at most 100")
    for n in range(1, request.to + 1):
        if request.to == 99:  # slowly: the test hangs up in the middle
            await asyncio.sleep(0.05)
        if request.to == 98:  # for 2 s: a stream in flight while something else happens
            await asyncio.sleep(0.02)
        if request.to == 13 and n == 3:
            raise Aborted("unlucky")
        if request.to == 14 and n == 3:
            raise Aborted("conflict", details=[error_info("COUNT_CONFLICT", "shop.example.com", {"at": "3"})])
        yield Tick(n=n)


async def title(ctx, request):
    return Book(id="t", title=f"On {request.name}", pages=300 if request.name != "empty" else 0)


async def describe(ctx, request):
    request.etag = "e-" + request.id
    return request


async def sum(ctx, requests):
    total = 0
    async for number in requests:
        total += number.value
    return Number(value=total)
'''


#: The origin the shop's gateway lets browsers call it from (GATEWAY["CORS"]).
ORIGIN = "https://app.example.com"


def user_env(tmp: Path) -> dict[str, str]:
    """The environment of a user's shell: no microframe settings, and on the path only this
    checkout's microframe (not the tests' packages, nor whichever microframe is installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROFRAME_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["MICROFRAME_REGISTRY_DIR"] = str(tmp / "registry")
    return env


class Shop:
    def __init__(self, tmp: Path, origins: tuple[str, ...] = ()) -> None:
        """``origins``: allowed by CORS beside :data:`ORIGIN`."""
        self.env = user_env(tmp)
        made = subprocess.run([sys.executable, "-m", "microframe", "startservice", "shop"], cwd=tmp,
                              env=self.env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        self.dir = tmp / "shop"
        (self.dir / "idl" / "shop.proto").write_text(PROTO)
        (self.dir / "controller" / "shop.py").write_text(CONTROLLER)
        settings = self.dir / "settings.py"
        settings.write_text(settings.read_text() + '\nDEBUG = False\nGATEWAY = {"MAX_BODY_BYTES": 300_000, "MAX_STREAM_MESSAGES": 100, "TIMEOUT": 5.0, '
                            f'"CORS": {{"ALLOW_ORIGINS": {json.dumps([ORIGIN, *origins])}, "MAX_AGE": 300}}}}\n')
        generated = subprocess.run([sys.executable, "manage.py", "genproto"], cwd=self.dir, env=self.env,
                                   capture_output=True, text=True, timeout=120)
        assert generated.returncode == 0, generated.stderr
        self.server = ServerProcess(tmp, manage=self.dir / "manage.py", full_env=self.env).wait_serving()
        self.gateway = GunicornProcess(self.dir, "shop.wsgi", self.env, extra=("--threads", "4")).wait_healthy()

    def get(self, path: str, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
        return self.gateway.request("GET", path, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, body: object, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.gateway.request("POST", path, data, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.gateway.kill()
        self.server.kill()


