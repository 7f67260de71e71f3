"""The configuration center: settings kept in etcd, applied at start-up and while serving.

``CONFIG["BACKEND"] = "microframe.contrib.config.etcd.EtcdConfig"`` adds two layers over the
settings module and its YAML overlays: ``<PREFIX>/_shared/<SETTING>`` for every service, then
``<PREFIX>/<SERVICE_NAME>/<SETTING>`` for this one (:mod:`.layers`). A running service follows
them and applies, checked, the settings listed in ``CONFIG["RELOAD"]`` (:mod:`.reload`);
``python manage.py config`` reads and writes them. See docs/topics/config.md.
"""

from microframe.contrib.config.backend import ConfigBackend, ConfigUnavailable, Layers

__all__ = ["ConfigBackend", "ConfigUnavailable", "Layers"]
