"""The errors the Greeter service declares: a caller that imports this module catches them as
the classes the controllers raise."""

from microframe.core.exceptions import FailedPrecondition


class NothingToGreet(FailedPrecondition):
    """LotsOfGreetings received no name."""

    reason = "NOTHING_TO_GREET"
    domain = "hello.example.com"
