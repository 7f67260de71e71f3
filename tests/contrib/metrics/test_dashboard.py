"""The Grafana dashboard shipped in docs/: valid PromQL (promtool), on metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import grpc

from example.generate.hello_pb2 import HelloRequest
from example.generate.hello_pb2_grpc import GreeterStub
from support.env import ROOT, require_binary
from support.servers import ServerProcess

DASHBOARD = ROOT / "docs" / "grafana" / "microframe-dashboard.json"
METRIC = re.compile(r"\b((?:grpc|microframe|process)_[a-z_]+)\b")


def expressions() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in data["templating"]["list"] if v.get("definition")]
    assert len(exprs) > 20
    return exprs


def as_promql(expr: str) -> str:
    """The expression as Prometheus sees it once Grafana has put in its variables."""
    return expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$service", ".*")


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    queries = [e for e in expressions() if not e.startswith("label_values")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": as_promql(e)} for i, e in enumerate(queries)
    ]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def test_every_metric_is_documented_and_the_server_ones_are_exported(tmp_path: Path) -> None:
    names = {m for e in expressions() for m in METRIC.findall(e)}
    documented = (ROOT / "docs" / "ref" / "metrics.md").read_text()
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    assert not [n for n in base if f"`{n}" not in documented]
    server = ServerProcess(tmp_path).wait_serving()
    try:
        with grpc.insecure_channel(server.address) as channel:
            GreeterStub(channel).SayHello(HelloRequest(name="dash"), timeout=5)
        scraped = set(re.findall(r"^([a-z_]+)(?:\{| )", server.metrics_text(), re.M))
    finally:
        server.kill()
    wanted = {n for n in names if n.startswith(("grpc_server_", "process_"))}
    assert wanted and not wanted - scraped, wanted - scraped
