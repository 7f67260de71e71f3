"""The coordination battery's system checks: coordination.E001, E002 and E003."""

from __future__ import annotations

from typing import Any

import pytest

import microframe.contrib.coordination.checks  # noqa: F401 - registers them (as ready() does)
from microframe.batteries import get_batteries
from microframe.core.checks import run_checks
from microframe.test import override_settings

ETCD = {"OPTIONS": {"endpoints": ["127.0.0.1:2379"]}, "PREFIX": "/c", "TTL": 10}
FILE_REGISTRY = {"BACKEND": "microframe.contrib.registry.file.FileRegistry", "OPTIONS": {}}
JOB = {"CALLABLE": "coord_tasks.every_job", "EVERY": 60}


def ids(**overrides: Any) -> list[str | None]:
    overrides.setdefault("REGISTRY", FILE_REGISTRY)
    with override_settings(**overrides):
        return [m.id for m in run_checks(tags=["coordination"])]


def test_the_battery_is_a_default_one():
    assert "coordination" in [b.label for b in get_batteries()]


def test_sound_settings_pass():
    assert ids() == []
    assert ids(COORDINATION=ETCD, TASKS={"a": {**JOB, "LEADER_ONLY": True},
                                         "b": {"CALLABLE": "coord_tasks.leader_job", "EVERY": 0.5}}) == []
    etcd_registry = {"BACKEND": "microframe.contrib.registry.etcd.EtcdRegistry",
                     "OPTIONS": {"endpoints": ["127.0.0.1:2379"], "ttl": 5}}
    assert ids(REGISTRY=etcd_registry, TASKS={"a": {**JOB, "LEADER_ONLY": True}}) == []
    etcd_config = {"BACKEND": "microframe.contrib.config.etcd.EtcdConfig",
                   "OPTIONS": {"endpoints": ["127.0.0.1:2379"]}}
    assert ids(CONFIG=etcd_config, TASKS={"a": {**JOB, "LEADER_ONLY": True}}) == []


@pytest.mark.parametrize(
    ("overrides", "check_id"),
    [
        ({"COORDINATION": []}, "coordination.E001"),
        ({"COORDINATION": {**ETCD, "TIMEOUT": 3}}, "coordination.E001"),
        ({"COORDINATION": {**ETCD, "TTL": 0}}, "coordination.E001"),
        ({"COORDINATION": {**ETCD, "TTL": 2.5}}, "coordination.E001"),
        ({"COORDINATION": {**ETCD, "TTL": True}}, "coordination.E001"),
        ({"COORDINATION": {**ETCD, "OPTIONS": ["127.0.0.1:2379"]}}, "coordination.E001"),
        ({"COORDINATION": {**ETCD, "PREFIX": "coordination"}}, "coordination.E001"),
        ({"TASKS": []}, "coordination.E002"),
        ({"TASKS": {"a": "coord_tasks.every_job"}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "EVRY": 5}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "CALLABLE": "coord_tasks.no_such_job"}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "CALLABLE": "no_such_module.job"}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "CALLABLE": "coord_tasks.os"}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "CALLABLE": "coord_tasks._append"}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "EVERY": 0}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "EVERY": "60"}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "LEADER_ONLY": "yes"}}}, "coordination.E002"),
        ({"TASKS": {"a": {**JOB, "LEADER_ONLY": True}}}, "coordination.E003"),
    ],
)
def test_broken_settings_are_reported(overrides, check_id):
    assert ids(**overrides) == [check_id]


def test_e003_names_the_tasks_and_the_way_out():
    with override_settings(REGISTRY=FILE_REGISTRY, TASKS={"z": {**JOB, "LEADER_ONLY": True}}):
        (message,) = run_checks(tags=["coordination"])
    assert "z" in message.msg and "COORDINATION" in message.hint
