"""The interop service's generated code and controllers are no test modules (genproto names
them after the protos: ``test_client.py``, ``test_service.py``)."""

collect_ignore = ["generate", "controller"]
