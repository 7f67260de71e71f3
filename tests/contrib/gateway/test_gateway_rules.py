"""google.api.http path templates: what they match and what they bind."""

from __future__ import annotations

import pytest

from microframe.contrib.gateway.rules import TemplateError, compile_template


@pytest.mark.parametrize(
    ("template", "path", "bound"),
    [
        ("/v1/hello", "/v1/hello", {}),
        ("/v1/orders/{id}", "/v1/orders/42", {"id": "42"}),
        ("/v1/orders/{id}", "/v1/orders/42/items", None),
        ("/v1/orders/{id}", "/v1/orders/", None),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b2", {"name": "shelves/s1/books/b2"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books", None),
        ("/v1/{name=shelves/*}/books:publish", "/v1/shelves/s1/books:publish", {"name": "shelves/s1"}),
        ("/v1/{name=shelves/*}/books:publish", "/v1/shelves/s1/books", None),
        ("/v1/{book.shelf}/{book.id}", "/v1/a/b", {"book.shelf": "a", "book.id": "b"}),
        ("/files/{path=**}", "/files/a/b/c.txt", {"path": "a/b/c.txt"}),
        ("/v1/*/items", "/v1/anything/items", {}),
        ("/v1/a.b/{x}", "/v1/aXb/1", None),  # literals are literal
    ],
)
def test_templates_match_and_bind(template: str, path: str, bound: dict[str, str] | None) -> None:
    regex, variables = compile_template(template)
    found = regex.fullmatch(path)
    if bound is None:
        assert found is None
    else:
        assert found is not None and dict(zip(variables, found.groups(), strict=True)) == bound


@pytest.mark.parametrize("template", ["v1/x", "/v1/{id", "/v1/id}", "/v1/{9id}", "/v1/{a=b{c}}", "/v1/{}"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(template)
