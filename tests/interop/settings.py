"""Settings of the interop service: ``grpc.testing.TestService`` as a user's service serves it,
with the framework's defaults but for the loopback address."""

SERVICE_NAME = "interop"
ROOT_ROUTER = "interop.app.router"

GRPC = {
    "HOST": "127.0.0.1",
    "PORT": 0,
}

METRICS = {"ENABLED": True, "HOST": "127.0.0.1", "PORT": 0}

LOG = {"DIR": None}
