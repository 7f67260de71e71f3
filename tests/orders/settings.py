"""Settings of the orders service: requests with validation rules, a declared error; the
framework's defaults but for the loopback address."""

SERVICE_NAME = "orders"
ROOT_ROUTER = "orders.app.router"

GRPC = {
    "HOST": "127.0.0.1",
    "PORT": 0,
}

METRICS = {"ENABLED": True, "HOST": "127.0.0.1", "PORT": 0}

LOG = {"DIR": None}

REGISTRY = {"REGISTER": False}
