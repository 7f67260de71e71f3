"""Settings of the example service served by the repository's ``manage.py``."""

SERVICE_NAME = "hello"
ROOT_ROUTER = "example.app.router"

DEBUG = False

GRPC = {
    "HOST": "127.0.0.1",
    "PORT": 50051,
}

METRICS = {
    "ENABLED": True,
    "HOST": "127.0.0.1",
    "PORT": 9464,
    "LABELS": {"env": "dev"},
}
