"""The orders service's generated code and controllers are no test modules."""

collect_ignore = ["generate", "controller", "app", "errors.py", "settings.py"]
