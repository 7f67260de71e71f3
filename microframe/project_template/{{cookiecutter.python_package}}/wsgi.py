"""The HTTP/JSON gateway to the {{ cookiecutter.service_name }} service's RPCs, for gunicorn.

Serve it with ``gunicorn {{ cookiecutter.python_package }}.wsgi`` from the service's directory (gunicorn.conf.py
puts the directory above on the Python path and reads the bind address from the environment).
It calls the gRPC service through the client library, so runserver must be serving too.
"""

import os

os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "{{ cookiecutter.python_package }}.settings")

from microframe.contrib.gateway import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
