"""The test service with per-method caps (GRPC["METHOD_TIMEOUTS"]): SayHello, LotsOfReplies
and BidiHello may run 0.3 s; LotsOfGreetings has no cap."""

from testservice.settings import *  # noqa: F403

GRPC = {  # noqa: F405
    **GRPC,  # noqa: F405
    "METHOD_TIMEOUTS": {
        "/helloworld.Greeter/SayHello": 0.3,
        "/helloworld.Greeter/LotsOfReplies": 0.3,
        "/helloworld.Greeter/BidiHello": 0.3,
    },
}
