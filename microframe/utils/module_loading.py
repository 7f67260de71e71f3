"""Import objects by dotted path, as settings name them."""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any


def cached_import(module_path: str, class_name: str) -> Any:
    """Return ``module_path.class_name``, importing the module only if it is not loaded yet."""
    module = sys.modules.get(module_path)
    spec = getattr(module, "__spec__", None)
    if module is None or getattr(spec, "_initializing", False):
        module = import_module(module_path)
    return getattr(module, class_name)


def import_string(dotted_path: str) -> Any:
    """Import a dotted module path and return the attribute named by its last part.

    Raise ImportError if the path is malformed or the attribute does not exist.
    """
    try:
        module_path, class_name = dotted_path.rsplit(".", 1)
    except ValueError as err:
        raise ImportError(f"{dotted_path!r} doesn't look like a module path") from err
    try:
        return cached_import(module_path, class_name)
    except AttributeError as err:
        raise ImportError(
            f"Module {module_path!r} does not define a {class_name!r} attribute/class"
        ) from err


def module_has_submodule(package: Any, module_name: str) -> bool:
    """Tell whether ``package`` has a submodule ``module_name`` without importing it."""
    from importlib.util import find_spec

    name = f"{package.__name__}.{module_name}"
    try:
        return find_spec(name) is not None
    except ModuleNotFoundError:
        return False
