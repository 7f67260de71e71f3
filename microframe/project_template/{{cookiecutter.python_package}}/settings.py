"""Settings of the {{ cookiecutter.service_name }} service.

Every setting and its default: https://microframe.readthedocs.io/ref/settings/ (or
docs/ref/settings.md of microframe). The YAML files of ``conf/<MICROFRAME_ENV>/`` overlay this
module: ``conf/product/`` in production (scripts/start.sh, the Dockerfile), ``conf/test/`` under
the service's tests.
"""

# The name the service registers under, and that its callers ask discovery for.
SERVICE_NAME = "{{ cookiecutter.service_name }}"

# The routes: written by `python manage.py genproto` from idl/*.proto.
ROOT_ROUTER = "{{ cookiecutter.python_package }}.app.router"

# True: runserver reloads when the code changes. conf/product sets it to false.
DEBUG = True

GRPC = {
    "HOST": "127.0.0.1",
    "PORT": {{ cookiecutter.port }},
}

METRICS = {
    "ENABLED": True,
    "HOST": "127.0.0.1",
    "PORT": {{ cookiecutter.metrics_port }},
}

# The services this one calls, by registered name: timeouts, balancer, breaker, retries.
CLIENTS: dict = {
    # "users": {"TIMEOUT": 0.5, "BALANCER": "p2c"},
}
