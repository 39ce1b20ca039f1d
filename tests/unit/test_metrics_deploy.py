"""deploy/ checked by Prometheus's own tools and against the metrics the worker exports (no broker)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.deploy_checks import (
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_DIR,
    PROMETHEUS_OWN,
    REPO,
    alert_rules,
    dashboard,
    dashboard_exprs,
    exported_names,
    promql_metric_names,
    promtool,
    tagger_workers,
)
from tests.unit.test_metrics import populated_metrics

#: What the issue asks alerts for, and the alert that covers it.
REQUIRED_ALERTS = {
    "lag growing": "TaggerConsumerLagGrowing",
    "dead-letter rate above a threshold": "TaggerDeadLetterRateHigh",
    "no events for N minutes": "TaggerNoEvents",
    "a worker not ready": "TaggerWorkerNotReady",
    "p99 latency above its target": "TaggerLatencyP99High",
    "Redis unreachable": "TaggerRedisUnreachable",
}


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "1 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_fails_when_an_alert_is_broken(tmp_path: Path) -> None:
    """The rule tests can fail: a dead-letter threshold of 3% no longer fires at 2%."""
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path)
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    assert "> 0.01" in text
    (tmp_path / "alerts.yml").write_text(text.replace("> 0.01", "> 0.03"))
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "TaggerDeadLetterRateHigh" in result.stdout + result.stderr


def test_every_required_alert_exists_with_a_runbook_and_is_tested_both_ways() -> None:
    alerts = {r["alert"]: r for r in alert_rules() if "alert" in r}
    assert set(REQUIRED_ALERTS.values()) <= set(alerts)
    for name, rule in alerts.items():
        assert rule["annotations"].get("runbook", "").strip(), f"{name}: no runbook line"
        assert rule["labels"]["severity"] in ("warning", "critical")
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for name in alerts:
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: never made to fire"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: never checked quiet"


def test_alert_rules_use_only_exported_metrics() -> None:
    exported = exported_names(populated_metrics().render().decode()) | PROMETHEUS_OWN
    exported |= {r["record"] for r in alert_rules() if "record" in r}
    for rule in alert_rules():
        assert promql_metric_names(rule["expr"]) <= exported, (rule.get("alert") or rule["record"], rule["expr"])


def test_promql_metric_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, job) (rate(tagger_x_bucket{since="a b", le!="1e-9"}'
            '[$__rate_interval]))) / on (job) group_left count(up{job="t"} == 1) > bool 1e-9'
            ' and tagger:rec:sum offset 5m')
    assert promql_metric_names(expr) == {"tagger_x_bucket", "up", "tagger:rec:sum"}


def test_dashboard_is_valid_and_refers_only_to_exported_metrics() -> None:
    doc = dashboard()  # valid JSON, or this raises
    assert doc["uid"] and doc["title"] and doc["panels"]
    exported = exported_names(populated_metrics().render().decode()) | PROMETHEUS_OWN
    used: set[str] = set()
    for expr in dashboard_exprs():
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    # what the issue asks the dashboard to show
    for needed in ("tagger_events_total", "tagger_emit_latency_seconds_bucket", "tagger_consumer_lag",
                   "tagger_customers_by_tier", "tagger_tag_changes_total", "tagger_churn_alerts_total",
                   "tagger_dead_letters_total", "tagger_sweep_duration_seconds_bucket"):
        assert needed in used, needed
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "prometheus" for p in panels)
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])


def test_grafana_provisioning_matches_compose_and_dashboard() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tagger.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    workers = tagger_workers(compose)
    assert {"kafka", "redis", "prometheus", "grafana"} <= set(compose) and len(workers) >= 2
    mounts = {}
    for service in ("prometheus", "grafana"):
        for volume in compose[service]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):  # bind mounts of deploy/ (named volumes hold their data)
                assert (REPO / source).exists(), volume
                mounts[target] = REPO / source
    assert mounts[dashboards_path] == DASHBOARD.parent
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana/provisioning"
    assert (mounts["/etc/prometheus"] / "prometheus.yml").exists()
    assert "datasource" in str(datasource) and "prometheus:9090" in datasource["datasources"][0]["url"]
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "tagger")
    targets = {f"{name}:{w['environment']['TAGGER_WEB_PORT']}" for name, w in workers.items()}
    assert set(job["static_configs"][0]["targets"]) == targets
    for worker in workers.values():
        assert "/readyz" in " ".join(worker["healthcheck"]["test"])


def test_kubernetes_probes_use_the_health_endpoints() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s/tagger.yaml").read_text()))
    workers = next(d for d in docs if d["kind"] == "StatefulSet")
    env = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    container = workers["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = next(p for p in container["ports"] if p["name"] == container["readinessProbe"]["httpGet"]["port"])
    assert str(port["containerPort"]) == env["TAGGER_WEB_PORT"]
    annotations = workers["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["TAGGER_WEB_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"
