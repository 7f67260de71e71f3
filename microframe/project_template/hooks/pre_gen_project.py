"""Refuse answers that would produce a service that cannot run."""

import keyword
import re
import sys

service_name = "{{ cookiecutter.service_name }}"
python_package = "{{ cookiecutter.python_package }}"
proto_package = "{{ cookiecutter.proto_package }}"
service_class = "{{ cookiecutter.service_class }}"
ports = {"port": "{{ cookiecutter.port }}", "metrics_port": "{{ cookiecutter.metrics_port }}"}

problems = []
if not service_name or "/" in service_name or any(c.isspace() for c in service_name):
    problems.append(f"service_name {service_name!r} must be non-empty, without '/' or spaces (it is the registry name).")
if not python_package.isidentifier() or keyword.iskeyword(python_package):
    problems.append(f"python_package {python_package!r} is not a valid Python identifier.")
if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", proto_package):
    problems.append(f"proto_package {proto_package!r} is not a proto package name (words joined by dots).")
if not re.fullmatch(r"[A-Z]\w*", service_class):
    problems.append(f"service_class {service_class!r} must be a CamelCase proto service name.")
for name, value in ports.items():
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        problems.append(f"{name} {value!r} is not a port number (0-65535).")
if ports["port"] == ports["metrics_port"] and ports["port"] != "0":
    problems.append("port and metrics_port must differ.")
if problems:
    sys.stderr.write("Cannot create the service:\n" + "".join(f"  - {p}\n" for p in problems))
    sys.exit(1)
