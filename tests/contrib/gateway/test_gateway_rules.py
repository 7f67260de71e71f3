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
        # A multi-segment variable as OpenAPI clients send it (a path parameter's slashes
        # percent-encoded), or partly so; a single segment never takes an encoded slash.
        ("/v1/{name=shelves/*/books/*}:publish", "/v1/shelves%2Fs1%2Fbooks%2Fb2:publish",
         {"name": "shelves%2Fs1%2Fbooks%2Fb2"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1%2fbooks/b2", {"name": "shelves/s1%2fbooks/b2"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves%2Fs1%2Fx%2Fbooks%2Fb2", None),
        ("/v1/{name=shelves/*}/books", "/v1/shelves%2Fa%2Fb/books", None),
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


def test_an_encoded_multi_segment_variable_binds_the_decoded_value() -> None:
    from types import SimpleNamespace

    from microframe.contrib.gateway.rules import Binding

    regex, variables = compile_template("/v1/{name=shelves/*/books/*}:publish")
    binding = Binding("POST", "", regex, variables, "*", "", SimpleNamespace(), "")
    assert binding.match("/v1/shelves%2Fs%201%2Fbooks%2Fb2:publish") == {
        "name": "shelves/s 1/books/b2"
    }


@pytest.mark.parametrize("emit_defaults", [False, True])
def test_a_response_body_field_is_encoded_as_the_whole_reply_would_be(emit_defaults: bool) -> None:
    """``response_body: "methods"`` answers the field's JSON, its messages with their defaults
    only when EMIT_DEFAULTS says so (as the whole reply's JSON has them), and the field itself
    even when it is empty."""
    import json
    from types import SimpleNamespace

    from google.protobuf.api_pb2 import Api, Method

    from microframe.contrib.gateway.app import GatewayApplication

    app = SimpleNamespace(emit_defaults=emit_defaults)
    encoded = GatewayApplication._encode(app, Api(methods=[Method(name="m")]), "methods")  # type: ignore[arg-type]
    method = json.loads(encoded)[0]
    assert method["name"] == "m"
    assert ("requestTypeUrl" in method) is emit_defaults
    assert json.loads(GatewayApplication._encode(app, Api(), "methods")) == []  # type: ignore[arg-type]
    assert json.loads(GatewayApplication._encode(app, Api(), "name")) == ""  # type: ignore[arg-type]
