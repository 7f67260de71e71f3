"""Batteries: the packages that plug themselves into microframe, as Django's apps do.

A battery is a package listed in the ``BATTERIES`` setting. Its ``battery.py`` module defines a
:class:`Battery` subclass (Django's ``apps.py`` and ``AppConfig``) whose :meth:`Battery.ready`
is called once per process, before the system checks run and when a command calls
``microframe.setup()``: that is where a battery registers its checks, by importing the module
that defines them. A battery's ``management/commands/`` modules are commands of ``manage.py``::

    # shop/battery.py
    from microframe.batteries import Battery


    class ShopBattery(Battery):
        name = "shop"

        def ready(self) -> None:
            import shop.checks  # noqa: F401 - registers the shop's checks

An entry of ``BATTERIES`` is the dotted path of such a package (``"shop"``), or of a
:class:`Battery` subclass itself (``"shop.battery.ShopBattery"``).
"""

from __future__ import annotations

import threading
from importlib import import_module
from types import ModuleType

from microframe.core.exceptions import ImproperlyConfigured

__all__ = ["Battery", "get_batteries", "setup_batteries"]

BATTERY_MODULE_NAME = "battery"


class Battery:
    """A battery: its package's dotted path (``name``), a short ``label``, and :meth:`ready`.

    ``name`` defaults to the package the subclass is defined in (``shop`` for a class of
    ``shop/battery.py``), ``label`` to the last part of ``name``.
    """

    name: str = ""
    label: str = ""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.name or _package_of(type(self).__module__)
        self.label = self.label or self.name.rpartition(".")[2]

    def ready(self) -> None:
        """Plug the battery in: register its checks, connect its signals. Called once."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.label}>"


def _package_of(module: str) -> str:
    """The package of a battery class's module: ``shop`` for ``shop.battery``."""
    package, _, last = module.rpartition(".")
    return package if last == BATTERY_MODULE_NAME and package else module


def _battery_classes(module: ModuleType) -> list[type[Battery]]:
    """The Battery subclasses defined in ``module`` (not those it imports)."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Battery)
        and value is not Battery
        and value.__module__ == module.__name__
    ]


def _import_module(path: str, entry: str) -> ModuleType | None:
    """Import ``path``; None if it (or a package above it) does not exist."""
    try:
        return import_module(path)
    except ModuleNotFoundError as err:
        if err.name and (path == err.name or path.startswith(err.name + ".")):
            return None
        raise ImproperlyConfigured(
            f"BATTERIES entry {entry!r}: importing {path!r} failed: {err}"
        ) from err
    except ImportError as err:
        raise ImproperlyConfigured(
            f"BATTERIES entry {entry!r}: importing {path!r} failed: {err}"
        ) from err


def load_battery(entry: str) -> Battery:
    """Import the battery ``entry`` names (a package or a Battery subclass) and return it.

    Raise ImproperlyConfigured when it does not import or holds no Battery.
    """
    if not isinstance(entry, str) or not entry:
        raise ImproperlyConfigured(
            f"BATTERIES entries must be dotted paths (str), not {entry!r}."
        )
    package = _import_module(entry, entry)
    if package is not None:
        if getattr(package, "__path__", None) is None:
            raise ImproperlyConfigured(
                f"BATTERIES entry {entry!r} is a module, not a package with a "
                f"{BATTERY_MODULE_NAME}.py module nor a Battery subclass."
            )
        module = _import_module(f"{entry}.{BATTERY_MODULE_NAME}", entry)
        if module is None:
            raise ImproperlyConfigured(
                f"BATTERIES entry {entry!r} has no {BATTERY_MODULE_NAME}.py module.",
            )
        classes = _battery_classes(module)
        if len(classes) != 1:
            found = "no" if not classes else "several"
            raise ImproperlyConfigured(
                f"{module.__name__} defines {found} Battery subclasses; BATTERIES entry "
                f"{entry!r} needs exactly one (or name the class: "
                f"'{module.__name__}.ClassName')."
            )
        return classes[0](entry)
    module_path, _, class_name = entry.rpartition(".")
    module = _import_module(module_path, entry) if module_path else None
    if module is None:
        raise ImproperlyConfigured(
            f"BATTERIES entry {entry!r} does not import: no such package or module."
        )
    value = getattr(module, class_name, None)
    if not (isinstance(value, type) and issubclass(value, Battery)):
        what = "is not defined" if value is None else "is not a Battery subclass"
        raise ImproperlyConfigured(
            f"BATTERIES entry {entry!r}: {class_name!r} {what} in {module_path!r}."
        )
    return value()


_lock = threading.RLock()
_loaded: dict[str, Battery] = {}
_ready: set[str] = set()


def _entries() -> list[str]:
    """The entries of ``BATTERIES``: the settings', or the default ones without settings.

    A ``BATTERIES`` that is not a list of str gives none: the system checks report it
    (``microframe.E001``) rather than failing before they run.
    """
    from microframe.conf import global_settings, settings

    try:
        entries = settings.BATTERIES
    except ImproperlyConfigured:
        entries = global_settings.BATTERIES
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, str) for e in entries):
        return []
    return list(dict.fromkeys(entries))


def get_batteries() -> list[Battery]:
    """Return the batteries of ``BATTERIES``, in its order, importing each once."""
    with _lock:
        batteries = []
        for entry in _entries():
            if entry not in _loaded:
                _loaded[entry] = load_battery(entry)
            batteries.append(_loaded[entry])
        return batteries


def setup_batteries() -> None:
    """Import the batteries of ``BATTERIES`` and call each one's ``ready()`` once per process."""
    with _lock:
        for battery in get_batteries():
            if battery.name not in _ready:
                _ready.add(battery.name)
                battery.ready()
