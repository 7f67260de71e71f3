"""The API's docs page at ``/docs``: Swagger UI over the gateway's ``/openapi.json``.

Every asset comes from the gateway itself, nothing from a CDN, so the page works on a closed
network and leaks no visit to a third party: Swagger UI's bundle and stylesheet are those of the
pinned ``swagger-ui-py`` package (the ``gateway`` extra), read once at start-up; the page and
its start-up script are microframe's, with Swagger UI's online validator turned off (it would
load a badge from swagger.io). The answers carry a Content-Security-Policy that allows nothing
but the gateway's own origin, so the page cannot load or send anything elsewhere.

The paths are relative (``docs/swagger-ui.css``, ``openapi.json``), so the page works when the
gateway is mounted under a prefix.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files

#: The assets of Swagger UI the page loads: file name -> content type.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

#: Nothing from elsewhere; Swagger UI sets styles inline, and shows images as data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""

_INIT = """window.ui = SwaggerUIBundle({{
  url: {spec},
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
  presets: [SwaggerUIBundle.presets.apis],
}});
"""


class DocsPage:
    """The page, its script and Swagger UI's assets, in memory: (content type, bytes) by path
    under the gateway (``/docs``, ``/docs/init.js``...)."""

    def __init__(self, title: str) -> None:
        static = files("swagger_ui") / "static"
        self.files: dict[str, tuple[str, bytes]] = {
            "/docs": ("text/html; charset=utf-8",
                      _PAGE.format(title=html.escape(f"{title}: API")).encode()),
            "/docs/init.js": ("text/javascript; charset=utf-8",
                              _INIT.format(spec=json.dumps("openapi.json")).encode()),
        }
        for name, kind in ASSETS.items():
            self.files[f"/docs/{name}"] = (kind, (static / name).read_bytes())

    def get(self, path: str) -> tuple[str, bytes] | None:
        return self.files.get(path)

    @staticmethod
    def headers(kind: str, body: bytes, page: bool) -> list[tuple[str, str]]:
        headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
                   ("X-Content-Type-Options", "nosniff")]
        if page:
            headers.append(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
            headers.append(("Cache-Control", "no-cache"))
        else:
            headers.append(("Cache-Control", "public, max-age=86400"))
        return headers
