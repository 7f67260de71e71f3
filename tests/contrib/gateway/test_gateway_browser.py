"""The gateway as browsers and browser-side libraries see it, through independent clients from
the npm registry (pinned by ``browser/package-lock.json``): Connect's gRPC-Web transport in Node
calling unary and streaming RPCs, and a real headless Chromium, driven by Playwright, reading
the ``/docs`` page, trying a call from it, and calling the gateway from pages of other origins."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from microframe.codegen.protoc import run_protoc

from support.env import require_binary
from support.npm import node_modules
from support.shop import Shop

pytestmark = pytest.mark.timeout(240)

HERE = Path(__file__).parent / "browser"


@pytest.fixture(scope="module")
def modules() -> Path:
    require_binary("node")
    return node_modules(HERE, "gateway-browser", "playwright-core/package.json")


def _node(modules: Path, script: str, *args: str) -> dict:
    done = subprocess.run([require_binary("node"), str(HERE / script), *args], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "NODE_PATH": str(modules)})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_connect_grpc_web_client(shop: Shop, modules: Path, tmp_path: Path) -> None:
    # Connect builds its client from the protos' descriptors (error_details for the details).
    descriptors = tmp_path / "shop.binpb"
    run_protoc(shop.dir / "idl", [Path("shop.proto"), Path("google/rpc/error_details.proto")],
               f"--descriptor_set_out={descriptors}", "--include_imports")
    seen = _node(modules, "grpc_web_client.cjs", str(descriptors), shop.gateway.url)
    assert seen["unary"] == "Hello, Ada!"
    assert seen["json"] == "Hello, Grace!"  # application/grpc-web+json
    assert seen["metadata"] == "'acme'"
    assert seen["stream"] == [1, 2, 3]
    assert seen["streamError"] == {"code": "Aborted", "message": "conflict", "seen": [1, 2], "details": [
        {"reason": "COUNT_CONFLICT", "domain": "shop.example.com", "metadata": {"at": "3"}}]}
    assert seen["unaryError"] == {"code": "InvalidArgument", "message": "bad name", "seen": [], "details": []}
    assert seen["deadline"]["code"] == "DeadlineExceeded" and 0 < seen["deadline"]["seen"] < 99
    assert seen["describe"] == {"id": "e1", "kind": "BOOK", "big": "9007199254740993", "counts": {"x": 2}, "etag": "e-e1"}


def test_docs_page_and_cross_origin_pages_in_chromium(shop: Shop, modules: Path,
                                                     page_origins: tuple[str, str]) -> None:
    chromium = require_binary("chromium")
    seen = _node(modules, "browser.cjs", chromium, shop.gateway.url, *page_origins)
    docs = seen["docs"]
    assert docs["problems"] == []
    assert docs["title"].startswith("shop")
    spec = json.loads(shop.get("/openapi.json")[2])
    expected = {f"{verb.upper()} {path}" for path, item in spec["paths"].items() for verb in item}
    assert set(docs["operations"]) == expected
    # "Try it out" reached the service and shows its reply.
    assert docs["status"] == "200" and json.loads(docs["reply"]) == {"message": "Hello, Ada!"}
    # Every URL the page loaded is the gateway's own: nothing from a CDN.
    assert docs["loaded"] and all(url.startswith(shop.gateway.url + "/") for url in docs["loaded"]), docs["loaded"]
    # From an allowed origin the preflighted call goes through; from another one the browser
    # refuses to let the page read it.
    assert seen["allowed"]["ok"] and seen["allowed"]["body"] == {"id": "b7", "title": "s1: Dune"}
    assert not seen["refused"]["ok"]
    assert any("preflight" in message for message in seen["refused"]["messages"]), seen["refused"]


def test_docs_assets_are_served_with_a_strict_policy(shop: Shop) -> None:
    status, headers, body = shop.get("/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    assert b"docs/swagger-ui-bundle.js" in body and b"//" not in body.replace(b"<!DOCTYPE", b"")
    status, headers, body = shop.get("/docs/swagger-ui-bundle.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and len(body) > 100_000
    assert shop.get("/docs/../settings.py")[0] == 404
    # /docs/ leads to /docs, where the page's relative paths resolve.
    status, _, body = shop.get("/docs/")
    assert status == 200 and b"docs/init.js" in body
