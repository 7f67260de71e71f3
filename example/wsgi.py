"""The HTTP/JSON gateway to the example service, for gunicorn: ``gunicorn example.wsgi``.

From the repository's root, with ``python manage.py runserver`` serving::

    curl -d '{"name": "Ada"}' http://127.0.0.1:8000/helloworld.Greeter/SayHello
"""

import os

os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "example.settings")

from microframe.contrib.gateway import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
