"""pytest set-up of the service's tests: its settings, with the conf/test/ overlay."""

import os

os.environ.setdefault("MICROFRAME_SETTINGS_MODULE", "{{ cookiecutter.python_package }}.settings")
os.environ.setdefault("MICROFRAME_ENV", "test")
