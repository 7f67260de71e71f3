"""The shop behind a real gunicorn gateway (:mod:`support.shop`), started once for the gateway's
test modules, and two web servers of pages on other origins, one of them allowed by its CORS
policy, the other not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.shop import Shop


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<!DOCTYPE html><title>a page of another origin</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def page_origins() -> Iterator[tuple[str, str]]:
    """The origins (``http://127.0.0.1:PORT``) of two page servers: allowed, refused."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Page) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)  # type: ignore[misc]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory, page_origins: tuple[str, str]) -> Iterator[Shop]:
    service = Shop(tmp_path_factory.mktemp("gateway"), origins=(page_origins[0],))
    yield service
    service.close()
