"""``override_settings``: change settings for a block, a function or a test class."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from microframe.conf import UserSettingsHolder, deep_merge, settings
from microframe.core.signals import setting_changed


class override_settings:  # noqa: N801 - named like Django's
    """Override settings as a context manager or a decorator.

    Dictionaries given here replace the current value whole, as in Django. Every changed
    setting is announced with ``setting_changed`` on enter and exit so batteries that cache a
    setting reset themselves. Use ``merge=True`` to merge dict values into the current ones.
    """

    def __init__(self, *, merge: bool = False, **kwargs: Any) -> None:
        self.options = kwargs
        self.merge = merge
        self.wrapped: Any = None

    def enable(self) -> None:
        override = UserSettingsHolder(settings._wrapped if settings.configured else _loaded())
        for key, new_value in self.options.items():
            if self.merge and isinstance(new_value, dict):
                new_value = deep_merge(getattr(settings, key, {}), new_value)
            setattr(override, key, new_value)
        self.wrapped = settings._wrapped
        settings._wrapped = override
        for key in self.options:
            setting_changed.send(
                sender=settings._wrapped.__class__,
                setting=key,
                value=getattr(override, key),
                enter=True,
            )

    def disable(self) -> None:
        settings._wrapped = self.wrapped
        self.wrapped = None
        for key in self.options:
            new_value = getattr(settings, key, None)
            setting_changed.send(
                sender=settings._wrapped.__class__, setting=key, value=new_value, enter=False
            )

    def __enter__(self) -> override_settings:
        self.enable()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disable()

    def __call__(self, target: Any) -> Any:
        if inspect.isclass(target):
            return self._decorate_class(target)
        if inspect.iscoroutinefunction(target):

            @functools.wraps(target)
            async def async_inner(*args: Any, **kwargs: Any) -> Any:
                with self.__class__(merge=self.merge, **self.options):
                    return await target(*args, **kwargs)

            return async_inner

        @functools.wraps(target)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with self.__class__(merge=self.merge, **self.options):
                return target(*args, **kwargs)

        return inner

    def _decorate_class(self, cls: type) -> type:
        for name, attr in list(vars(cls).items()):
            if name.startswith("test") and callable(attr):
                setattr(cls, name, self(attr))
        return cls


def _loaded() -> Any:
    settings._setup()
    return settings._wrapped
