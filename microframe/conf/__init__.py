"""Settings: a lazy proxy over global defaults, the service's module and YAML overlays.

``settings`` is configured on first access from the module named by the environment variable
``MICROFRAME_SETTINGS_MODULE``, or explicitly with :meth:`LazySettings.configure`. When
``MICROFRAME_ENV`` is set, every ``*.yaml`` file of ``<conf dir>/<env>/`` (sorted by name)
overlays the module: upper-case keys only, dictionaries merged deeply.
"""

from __future__ import annotations

import copy
import importlib
import os
import time
from pathlib import Path
from typing import Any

from microframe.conf import global_settings
from microframe.core.exceptions import ImproperlyConfigured

ENVIRONMENT_VARIABLE = "MICROFRAME_SETTINGS_MODULE"
ENV_VARIABLE = "MICROFRAME_ENV"

empty = object()


#: Keys whose dict value is replaced whole, not merged: the keyword arguments of a backend are
#: a unit (``LIMITER = {"BACKEND": "...LeakyBucket", "OPTIONS": {"rate": 10, "capacity": 5}}``
#: must not inherit the default TokenBucket's ``burst``).
ATOMIC_KEYS = frozenset({"OPTIONS"})


def deep_merge(base: Any, overlay: Any) -> Any:
    """Return ``overlay`` merged into ``base``: dicts recursively (except the values of
    :data:`ATOMIC_KEYS`), anything else replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merges = key in base and key not in ATOMIC_KEYS
            merged[key] = deep_merge(base[key], value) if merges else value
        return merged
    return overlay


def dict_setting(name: str) -> Any:
    """Return the dict setting ``name`` completed with its defaults of ``global_settings``.

    A settings module, its YAML overlays and ``settings.configure()`` are merged over the
    defaults already, but a dict given to ``override_settings`` replaces the setting whole, as
    in Django, and may lack keys. Code that reads single keys of a dict setting reads it through
    this function, so that each default is written once, in ``global_settings``, and never again
    as a ``.get()`` fallback. A value that is not a dict (a broken setting the checks report) is
    returned as it is; the result is not to be mutated (it shares values with the defaults).
    """
    value = getattr(settings, name, None)
    return deep_merge(getattr(global_settings, name), value) if isinstance(value, dict) else value


def load_yaml_overlays(conf_dir: Path, env: str) -> list[tuple[Path, dict[str, Any]]]:
    """Read every ``*.yaml``/``*.yml`` of ``conf_dir/env`` in name order.

    Raise ImproperlyConfigured naming the file (and line) when one cannot be read or parsed,
    or does not hold a mapping.
    """
    import yaml

    env_dir = conf_dir / env
    if not env_dir.is_dir():
        raise ImproperlyConfigured(
            f"{ENV_VARIABLE}={env!r} but the directory {env_dir} does not exist."
        )
    files = sorted([*env_dir.glob("*.yaml"), *env_dir.glob("*.yml")])
    overlays = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err)
            raise ImproperlyConfigured(f"Invalid YAML in {where}: {problem}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ImproperlyConfigured(f"Cannot read settings overlay {path}: {err}") from err
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ImproperlyConfigured(
                f"Settings overlay {path} must hold a mapping of setting names, "
                f"not {type(data).__name__}."
            )
        bad = [k for k in data if not isinstance(k, str)]
        if bad:
            raise ImproperlyConfigured(f"Settings overlay {path} has non-string keys: {bad!r}")
        overlays.append((path, {k: v for k, v in data.items() if k.isupper()}))
    return overlays


class Settings:
    """Settings read from a module over the global defaults, then the YAML overlays."""

    def __init__(self, settings_module: str) -> None:
        for setting in dir(global_settings):
            if setting.isupper():
                setattr(self, setting, copy.deepcopy(getattr(global_settings, setting)))
        self.SETTINGS_MODULE = settings_module
        try:
            mod = importlib.import_module(settings_module)
        except ModuleNotFoundError as err:
            if err.name and settings_module.startswith(err.name):
                raise ImproperlyConfigured(
                    f"Settings module {settings_module!r} cannot be found "
                    f"({ENVIRONMENT_VARIABLE} or --settings). Is it on sys.path (--pythonpath)?"
                ) from err
            raise
        self._explicit_settings: set[str] = set()
        for setting in dir(mod):
            if setting.isupper():
                value = getattr(mod, setting)
                default = getattr(self, setting, None)
                if isinstance(default, dict) and isinstance(value, dict):
                    value = deep_merge(default, value)
                setattr(self, setting, value)
                self._explicit_settings.add(setting)
        module_file = getattr(mod, "__file__", None)
        self.SERVICE_ROOT = str(Path(module_file).resolve().parent) if module_file else os.getcwd()
        self.ENV = os.environ.get(ENV_VARIABLE) or None
        self.SETTINGS_FILES: list[str] = [module_file] if module_file else []
        if self.ENV:
            conf_dir_setting = getattr(self, "CONF_DIR", None)
            if conf_dir_setting:
                conf_dir = Path(conf_dir_setting)
            else:
                conf_dir = Path(self.SERVICE_ROOT) / "conf"
            for path, overlay in load_yaml_overlays(conf_dir, self.ENV):
                for key, value in overlay.items():
                    if hasattr(self, key):
                        value = deep_merge(getattr(self, key), value)
                    setattr(self, key, value)
                    self._explicit_settings.add(key)
                self.SETTINGS_FILES.append(str(path))
        time_zone = getattr(self, "TIME_ZONE", None)
        if time_zone and hasattr(time, "tzset"):
            os.environ["TZ"] = time_zone
            time.tzset()

    def is_overridden(self, setting: str) -> bool:
        return setting in self._explicit_settings

    def __repr__(self) -> str:
        return f'<{self.__class__.__name__} "{self.SETTINGS_MODULE}">'


class UserSettingsHolder:
    """Settings configured by hand (``settings.configure``) over a defaults object."""

    SETTINGS_MODULE = None

    def __init__(self, default_settings: Any) -> None:
        self.__dict__["_deleted"] = set()
        self.default_settings = default_settings

    def __getattr__(self, name: str) -> Any:
        if not name.isupper() or name in self._deleted:
            raise AttributeError(name)
        return getattr(self.default_settings, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._deleted.discard(name)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        self._deleted.add(name)
        if hasattr(self, name):
            super().__delattr__(name)

    def __dir__(self) -> list[str]:
        return sorted(
            s for s in [*self.__dict__, *dir(self.default_settings)] if s not in self._deleted
        )

    def is_overridden(self, setting: str) -> bool:
        deleted = setting in self._deleted
        set_locally = setting in self.__dict__
        set_on_default = getattr(self.default_settings, "is_overridden", lambda s: False)(setting)
        return deleted or set_locally or set_on_default

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__}>"


class LazySettings:
    """Proxy that loads the settings on first access; ``settings`` is its one instance."""

    _wrapped: Any = empty

    def __init__(self) -> None:
        self.__dict__["_wrapped"] = empty

    def _setup(self, name: str | None = None) -> None:
        settings_module = os.environ.get(ENVIRONMENT_VARIABLE)
        if not settings_module:
            desc = f"setting {name}" if name else "settings"
            raise ImproperlyConfigured(
                f"Requested {desc}, but settings are not configured. Set the environment "
                f"variable {ENVIRONMENT_VARIABLE} (manage.py does) or call settings.configure() "
                "before accessing settings."
            )
        self.__dict__["_wrapped"] = Settings(settings_module)
        self._load_config_layers()

    def _load_config_layers(self) -> None:
        """Apply the configuration center's layers (``CONFIG``) over what was just loaded;
        when that fails the settings stay unloaded, and the next access fails the same way."""
        config = getattr(self._wrapped, "CONFIG", None)
        if not (isinstance(config, dict) and config.get("BACKEND")):
            return
        from microframe.contrib.config.layers import load_at_startup

        try:
            load_at_startup(self)
        except BaseException:
            self._wrapped = empty
            raise

    def __getattr__(self, name: str) -> Any:
        if (wrapped := self._wrapped) is empty:
            self._setup(name)
            wrapped = self._wrapped
        value = getattr(wrapped, name)
        # Cache in the proxy: settings are read on hot paths (override_settings clears it).
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_wrapped":
            self.__dict__.clear()
            self.__dict__["_wrapped"] = value
        else:
            self.__dict__.pop(name, None)
            if self._wrapped is empty:
                self._setup()
            setattr(self._wrapped, name, value)

    def __delattr__(self, name: str) -> None:
        if self._wrapped is empty:
            self._setup()
        delattr(self._wrapped, name)
        self.__dict__.pop(name, None)

    def __dir__(self) -> list[str]:
        if self._wrapped is empty:
            self._setup()
        return dir(self._wrapped)

    def configure(self, default_settings: Any = global_settings, **options: Any) -> None:
        """Configure the settings by hand instead of from a module (for scripts and tests)."""
        if self._wrapped is not empty:
            raise RuntimeError("Settings already configured.")
        holder = UserSettingsHolder(default_settings)
        for name, value in options.items():
            if not name.isupper():
                raise TypeError(f"Setting {name!r} must be uppercase.")
            default = getattr(default_settings, name, None)
            if isinstance(default, dict) and isinstance(value, dict):
                value = deep_merge(default, value)
            setattr(holder, name, value)
        # What a settings module would have given: the service root is the working directory.
        for name, value in (("SERVICE_ROOT", os.getcwd()), ("ENV", None), ("SETTINGS_FILES", [])):
            if name not in options:
                setattr(holder, name, value)
        self._wrapped = holder
        self._load_config_layers()

    @property
    def configured(self) -> bool:
        """Tell whether the settings have been loaded or configured."""
        return self._wrapped is not empty

    def _reset(self) -> None:
        """Forget the loaded settings (tests; the next access loads them again)."""
        self._wrapped = empty

    def __repr__(self) -> str:
        if self._wrapped is empty:
            return "<LazySettings [Unevaluated]>"
        return f"<LazySettings {self._wrapped!r}>"


settings = LazySettings()
