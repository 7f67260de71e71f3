"""What the tests share besides fixtures: paths, the environment of the processes they start,
real server processes, and the real backends (etcd, Redis, span receivers, a raw HTTP/2 client).

Fixtures live in ``tests/conftest.py``; everything a test imports by name lives here, so no test
imports a conftest (pytest's ``pythonpath`` setting puts ``tests/`` on ``sys.path``)."""
