"""deploy/ checked as tools would: every Kubernetes manifest against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields fail), the alert rules with `promtool check rules` and
`promtool test rules` (the acceptance of issue #16: the alerts fire on the series they should, and only
there), the PrometheusRule identical to the rules file, and the alerts and the Grafana dashboard reading
only metrics Fleet exports.

Skipped, and said so: CRDs (PodMonitor, PrometheusRule, KEDA's ScaledObject) have no schema in
kubernetes-validate; they get the structural checks below instead. promtool comes from Debian's
`prometheus` package (`make test` installs it); without it the promtool tests skip with that reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from scraper.worker.exporter import COUNTERS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RULES = ROOT / "deploy" / "prometheus" / "fleet-rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "fleet-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "fleet-dashboard.json"
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")  # no schema in kubernetes-validate

# what `fleet metrics` (scraper/infra/metrics.py) and the workers (scraper/worker/exporter.py) export
EXPORTED = {
    "fleet_up", "fleet_queue_ready", "fleet_queue_inflight", "fleet_queue_delayed", "fleet_queue_parked",
    "fleet_dlq_entries", "fleet_breakers", "fleet_run_seen", "fleet_run_done",
    "fleet_worker_up", "fleet_worker_pages_fetched_total", "fleet_worker_outcomes_total",
    "fleet_worker_proxy_bans_total", "fleet_worker_fetch_seconds_bucket", "fleet_worker_commit_seconds_bucket",
    "fleet_domain_inflight", "fleet_domain_limit", "fleet_domain_window", "fleet_domain_waiting",
    "fleet_domain_spacing_seconds", "fleet_domain_rate",
    *(name + "_total" for name, _ in COUNTERS.values()),
}
FOREIGN = {"kube_pod_container_status_restarts_total"}  # kube-state-metrics


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _metrics_in(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b(fleet_[a-z_]+|kube_[a-z_]+)\b", expr)}


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()
    validated, crds = [], []
    for name, doc in _docs():
        if doc["apiVersion"].startswith(CRD_GROUPS):
            assert doc.get("kind") and doc.get("metadata", {}).get("name") and doc.get("spec"), name
            crds.append(f"{name}:{doc['kind']}")
            continue
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError with the path
        validated.append(f"{name}:{doc['kind']}")
    assert sorted(v.split(":")[1] for v in validated) == ["CronJob", "Deployment", "Deployment", "Service"], validated
    assert {c.split(":")[1] for c in crds} == {"PodMonitor", "PrometheusRule", "ScaledObject"}, crds


def test_a_manifest_with_a_mistake_is_refused() -> None:
    _, doc = next((n, d) for n, d in _docs() if d["kind"] == "Deployment")
    doc["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_podmonitors_scrape_ports_the_pods_declare() -> None:
    docs = _docs()
    ports: dict[str, set[str]] = {}
    for _, d in docs:
        if d["kind"] == "Deployment":
            tpl = d["spec"]["template"]
            app = tpl["metadata"]["labels"]["app"]
            ports[app] = {p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])}
    monitors = [d for _, d in docs if d["kind"] == "PodMonitor"]
    assert monitors
    for m in monitors:
        app = m["spec"]["selector"]["matchLabels"]["app"]
        for ep in m["spec"]["podMetricsEndpoints"]:
            assert ep["port"] in ports[app], (m["metadata"]["name"], ep["port"], ports)
    worker = next(d for _, d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("fleet-worker"))
    env = {e["name"]: e.get("value") for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLEET_METRICS_PORT"] == "9465"


def test_the_prometheus_rule_is_the_rules_file() -> None:
    rule = next(d for _, d in _docs() if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_alerts_and_dashboard_read_only_exported_metrics() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"FleetBreakerOpen", "FleetDLQGrowing", "FleetNoProgress", "FleetRedisUnreachable",
                           "FleetWorkerRestarts"}
    for r in alerts.values():
        assert _metrics_in(r["expr"]) <= EXPORTED | FOREIGN, r["alert"]
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for e in exprs:
        assert _metrics_in(e) <= EXPORTED, e


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; `make test` installs it)")
    return path


def test_promtool_check_rules() -> None:
    res = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 5 rules found" in res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    res = subprocess.run([_promtool(), "test", "rules", RULES_TEST.name], capture_output=True, text=True,
                         timeout=120, cwd=RULES_TEST.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr
