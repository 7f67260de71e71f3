"""The messages system checks return: a level, a text, a hint and a stable id."""

from __future__ import annotations

from typing import Any

# Levels, as in the logging module (and Django).
DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
CRITICAL = 50


class CheckMessage:
    """A problem found by a check.

    ``id`` is stable (``"microframe.E004"``, ``"registry.W001"``...): users silence a message
    by listing its id in ``SILENCED_SYSTEM_CHECKS``. ``obj`` names what the message is about
    (``None`` prints as ``?``).
    """

    def __init__(
        self,
        level: int,
        msg: str,
        hint: str | None = None,
        obj: Any = None,
        id: str | None = None,  # noqa: A002 - named like Django's
    ) -> None:
        if not isinstance(level, int) or isinstance(level, bool):
            raise TypeError("The first argument should be level.")
        self.level = level
        self.msg = msg
        self.hint = hint
        self.obj = obj
        self.id = id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.__class__) and all(
            getattr(self, attr) == getattr(other, attr)
            for attr in ("level", "msg", "hint", "obj", "id")
        )

    def __hash__(self) -> int:
        return hash((self.level, self.msg, self.hint, self.id))

    def __str__(self) -> str:
        obj = "?" if self.obj is None else str(self.obj)
        id_ = f"({self.id}) " if self.id else ""
        hint = f"\n\tHINT: {self.hint}" if self.hint else ""
        return f"{obj}: {id_}{self.msg}{hint}"

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__}: level={self.level!r}, msg={self.msg!r}, "
            f"hint={self.hint!r}, obj={self.obj!r}, id={self.id!r}>"
        )

    def is_serious(self, level: int = ERROR) -> bool:
        """Tell whether the message is at ``level`` or above."""
        return self.level >= level

    def is_silenced(self) -> bool:
        """Tell whether ``settings.SILENCED_SYSTEM_CHECKS`` lists the message's id."""
        from microframe.conf import settings

        silenced = getattr(settings, "SILENCED_SYSTEM_CHECKS", ())
        if isinstance(silenced, str) or not isinstance(silenced, (list, tuple, set, frozenset)):
            return False
        return self.id is not None and self.id in silenced


class Debug(CheckMessage):
    """A message at the DEBUG level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(DEBUG, *args, **kwargs)


class Info(CheckMessage):
    """A message at the INFO level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(INFO, *args, **kwargs)


class Warning(CheckMessage):  # noqa: A001 - named like Django's
    """A message at the WARNING level: reported, fails only with ``--fail-level WARNING``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(WARNING, *args, **kwargs)


class Error(CheckMessage):
    """A message at the ERROR level: commands that run the checks stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(ERROR, *args, **kwargs)


class Critical(CheckMessage):
    """A message at the CRITICAL level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(CRITICAL, *args, **kwargs)


def unknown_keys(
    setting: str, config: dict, known: set[str] | frozenset[str], check_id: str
) -> list[CheckMessage]:
    """An error naming the keys of the ``setting`` dict ``config`` that are not in ``known``
    (none when there are none): a misspelt key would otherwise be ignored in silence. The hint
    suggests the known key closest to each unknown one, when one is close."""
    unknown = sorted(str(k) for k in set(config) - set(known))
    if not unknown:
        return []
    closest = {key: close_key(key, known) for key in unknown}
    guesses = [f"{near!r} (not {key!r})" for key, near in closest.items() if near]
    guess = f"Did you mean {', '.join(guesses)}? " if guesses else ""
    return [Error(f"{setting} has unknown keys: {', '.join(unknown)}.",
                  hint=f"{guess}Known keys: {', '.join(sorted(known))}.", id=check_id)]


def close_key(key: str, known: set[str] | frozenset[str]) -> str | None:
    """Return the key of ``known`` closest to ``key`` (case aside), or None when none is close."""
    import difflib

    by_fold = {str(k).casefold(): str(k) for k in known}
    found = difflib.get_close_matches(key.casefold(), list(by_fold), n=1, cutoff=0.6)
    return by_fold[found[0]] if found else None
