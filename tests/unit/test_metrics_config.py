"""[METRICS] validation and the counting side of archipelagent/metrics.py."""
from __future__ import annotations

import configparser
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from archipelagent.config import ConfigError
from archipelagent.errors import NotFound, PermissionDenied
from archipelagent.metrics import Metrics, MetricsConfig, observe_command, read_config


def config(tmp_path, **keys):
    parser = configparser.RawConfigParser()
    parser.add_section("METRICS")
    for k, v in keys.items():
        parser.set("METRICS", k, v)
    return SimpleNamespace(parser=parser, path=tmp_path / "archipel.conf")


def test_address_forms_and_errors_name_the_key(tmp_path):
    assert read_config(config(tmp_path)).host is None  # empty: no endpoint
    cfg = read_config(config(tmp_path, metrics_address="127.0.0.1:9474"))
    assert (cfg.host, cfg.port, cfg.user) == ("127.0.0.1", 9474, None)
    assert read_config(config(tmp_path, metrics_address="[::1]:9474")).host == "::1"
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    for keys, key in (({"metrics_address": "localhost:9474"}, "metrics_address"),
                      ({"metrics_address": "127.0.0.1:70000"}, "metrics_address"),
                      ({"metrics_address": "192.0.2.1:9474"}, "metrics_address"),  # not loopback, no auth/TLS
                      ({"metrics_address": "127.0.0.1:9474", "metrics_user": "p"}, "metrics_user"),
                      ({"metrics_address": "127.0.0.1:9474", "metrics_user": "p",
                        "metrics_password_file": str(tmp_path / "missing")}, "metrics_password_file"),
                      ({"metrics_address": "127.0.0.1:9474", "metrics_certfile": "/x.crt"}, "metrics_certfile")):
        with pytest.raises(ConfigError) as info:
            read_config(config(tmp_path, **keys))
        assert key in str(info.value)
    cfg = read_config(config(tmp_path, metrics_address="127.0.0.1:9474", metrics_user="p",
                             metrics_password_file=str(secret)))
    assert cfg.password == "s3cret"


def test_commands_are_counted_by_outcome_with_their_latency():
    metrics = Metrics(MetricsConfig(host=None))
    entity = SimpleNamespace(agent=SimpleNamespace(metrics=metrics))
    observe_command(entity, "archipel:vm:control", "info", "iq", None, None)
    observe_command(entity, "archipel:vm:control", "info", "iq", PermissionDenied("info"), None)
    observe_command(entity, "archipel:vm:control", "free", "chat", NotFound("x"), None)
    text = generate_latest(metrics.registry).decode()
    assert 'archipel_commands_total{action="info",namespace="archipel:vm:control",outcome="ok",transport="iq"} 1.0' in text
    assert 'archipel_permission_refusals_total{action="info",namespace="archipel:vm:control"} 1.0' in text
    assert 'outcome="error:-47",transport="chat"} 1.0' in text
    assert 'archipel_command_duration_seconds_count{action="info",namespace="archipel:vm:control"} 2.0' in text
    observe_command(SimpleNamespace(), "ns", "a", "iq", None, None)  # a test double without an agent: ignored


def test_the_grafana_dashboard_only_queries_metrics_the_agent_exports():
    """conf/grafana-dashboard.json stays true to metrics.py (a renamed metric would leave an empty panel)."""
    import json
    import re
    from pathlib import Path

    from archipelagent.health import proc  # noqa: F401 - the host figures come from the health module

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "conf" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\b(archipel_[a-z0-9_]+)", target["expr"])}
    metrics = Metrics(MetricsConfig(host=None))
    metrics.snapshot.entities = {("vm", "online"): 1}
    metrics.snapshot.xmpp_reconnects = {"vm": 0}
    metrics.snapshot.host = {"cpu": 1.0, "mem_total": 1, "mem_free": 1, "load1": 0.0}
    metrics.snapshot.vms = [("u", "n", {"cpu_time": 1, "balloon": 1, "disk_read": 1, "disk_write": 1, "net_rx": 1,
                                        "net_tx": 1, "state": 1})]
    metrics.command("ns", "a", "iq", "denied", 0.1)
    exported = set(re.findall(r"^(archipel_[a-z0-9_]+)", generate_latest(metrics.registry).decode(), re.M))
    assert used and used <= exported, used - exported
