"""deploy/ checked as tools would: every Kubernetes manifest against Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields fail), the alert rules with `promtool check rules` and
`promtool test rules` (the acceptance of issue #16: the alerts fire on the series they should, and only
there), the PrometheusRule identical to the rules file, and the alerts and the Grafana dashboard reading
only metrics Fleet exports, and every `fleet ...` command quoted in deploy/ (alert annotations, comments,
runbook text) a command the CLI accepts as written.

Skipped, and said so: CRDs (PodMonitor, PrometheusRule, KEDA's ScaledObject) have no schema in
kubernetes-validate; they get the structural checks below instead. promtool comes from Debian's
`prometheus` package (`make test` installs it); without it the promtool tests skip with that reason."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml
from typer._click.core import Command, Context  # typer vendors its click: the CLI's own parser
from typer._click.exceptions import UsageError
from typer.core import TyperGroup
from typer.testing import CliRunner

from scraper.cli.app import app
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
DEPLOY = ROOT / "deploy"


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


def _pod_templates(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The pod templates of the Deployments and CronJobs, by the workload's name."""
    out = {}
    for _, d in docs:
        if d["kind"] == "Deployment":
            out[d["metadata"]["name"]] = d["spec"]["template"]
        elif d["kind"] == "CronJob":
            out[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]
    return out


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_podmonitors_scrape_ports_the_pods_declare() -> None:
    """Every pod a PodMonitor selects declares the port it scrapes, and the pods that run workers (the
    worker Deployment, and the cron job's `fleet run`, whose acks FleetNoProgress reads) serve their
    metrics there: FLEET_METRICS_PORT is that port."""
    docs = _docs()
    pods = _pod_templates(docs)
    monitors = [d for _, d in docs if d["kind"] == "PodMonitor"]
    assert monitors
    scraped: dict[str, set[str]] = {}
    for m in monitors:
        selector = m["spec"]["selector"]["matchLabels"]
        matched = [name for name, tpl in pods.items() if _selects(selector, tpl["metadata"]["labels"])]
        assert matched, (m["metadata"]["name"], selector)
        for name in matched:
            declared = {p["name"] for c in pods[name]["spec"]["containers"] for p in c.get("ports", [])}
            for ep in m["spec"]["podMetricsEndpoints"]:
                assert ep["port"] in declared, (m["metadata"]["name"], name, ep["port"], declared)
                scraped.setdefault(name, set()).add(ep["port"])
    workers = {name for name, tpl in pods.items()
               if any(c["args"][0] in ("worker", "run") for c in tpl["spec"]["containers"] if c.get("args"))}
    assert {n for n in workers if n.startswith("fleet-worker")} and {n for n in workers if n.startswith("fleet-run")}
    for name in workers:
        assert "metrics" in scraped.get(name, set()), f"{name} runs workers but no PodMonitor scrapes it"
        c = pods[name]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
        assert env.get("FLEET_METRICS_PORT") == str(port), (name, env.get("FLEET_METRICS_PORT"), port)
        assert pods[name]["metadata"]["annotations"]["prometheus.io/port"] == str(port), name


def test_the_cron_run_never_retries_into_a_new_run() -> None:
    """`fleet run` without --run seeds a new run: a second pod of the same Job (backoffLimit > 0 after
    an exit 4 or 5) would start a fresh run beside the unfinished one. Its exits are verdicts, so the
    Job retries nothing; --deadline bounds the run, and the pod does not overlap the worker Deployment."""
    docs = _docs()
    cron = next(d for _, d in docs if d["kind"] == "CronJob")
    job = cron["spec"]["jobTemplate"]["spec"]
    args = job["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "run" and "--deadline" in args and "--run" not in args, args
    assert job["backoffLimit"] == 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["activeDeadlineSeconds"] > float(args[args.index("--deadline") + 1])
    header = (K8S / "cronjob-run.yaml").read_text()
    assert "5 incomplete" in header and "--resume" in header
    labels = job["template"]["metadata"]["labels"]
    for _, d in docs:
        if d["kind"] == "Deployment":
            assert not _selects(d["spec"]["selector"]["matchLabels"], labels), d["metadata"]["name"]


def test_the_prometheus_rule_is_the_rules_file() -> None:
    rule = next(d for _, d in _docs() if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_alerts_and_dashboard_read_only_exported_metrics() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"FleetBreakerOpen", "FleetDLQGrowing", "FleetNoProgress", "FleetRequestsParked",
                           "FleetRedisUnreachable", "FleetWorkerRestarts"}
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
    assert "SUCCESS: 6 rules found" in res.stdout + res.stderr


def test_promtool_test_rules() -> None:
    res = subprocess.run([_promtool(), "test", "rules", RULES_TEST.name], capture_output=True, text=True,
                         timeout=120, cwd=RULES_TEST.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _texts(path: Path) -> Iterator[str]:
    """The prose of a deploy/ file an operator reads: comments and string values (parsed, so a YAML
    scalar folded over two lines reads as one), or the whole of a Markdown file."""
    raw = path.read_text()
    comments = " ".join(ln.strip().lstrip("#") for ln in raw.splitlines() if ln.strip().startswith("#"))
    if path.suffix == ".md":
        yield raw.replace("\n", " ")
        return
    yield comments
    if path.suffix in (".yaml", ".yml"):
        for doc in yaml.safe_load_all(raw):
            yield from _strings(doc)
    elif path.suffix == ".json":
        yield from _strings(json.loads(raw))


def _quoted_fleet_commands() -> list[tuple[str, str]]:
    found = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for text in _texts(path):
            for cmd in re.findall(r"`(fleet [^`]+)`", text):
                # alert templates: {{ $labels.spider }} is a spider name when Prometheus renders it
                cmd = re.sub(r"\{\{\s*\$labels\.\w+\s*\}\}", "books", " ".join(cmd.split()))
                found.append((str(path.relative_to(ROOT)), cmd))
    return sorted(set(found))


def _resolve(tokens: list[str]) -> None:
    """Walk ``fleet TOKENS`` down the real command tree as click would, and parse the leaf's options and
    arguments with click's own parser (typer's vendored click): an unknown command, an unknown option, an option without its
    value or one positional argument too many raises ``UsageError``."""
    cmd: Command = typer.main.get_command(app)
    ctx = Context(cmd, info_name="fleet")
    rest = tokens
    while isinstance(cmd, TyperGroup) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            raise UsageError(f"No such command {rest[0]!r} under {ctx.command_path!r}")
        cmd, rest = sub, rest[1:]
        ctx = Context(cmd, info_name=cmd.name, parent=ctx)
    _, extra, _ = cmd.make_parser(ctx).parse_args(list(rest))
    if extra:
        raise UsageError(f"{ctx.command_path}: unexpected argument(s) {extra}")


def test_every_fleet_command_quoted_in_deploy_parses() -> None:
    """Alert annotations and runbook text name commands on-call will paste: each must exist as written.
    (FleetBreakerOpen once said `fleet breakers SPIDER`, which exits 2 with "No such command".)"""
    quoted = _quoted_fleet_commands()
    cmds = {c for _, c in quoted}
    assert {"fleet breakers list books", "fleet breakers reset books DOMAIN",
            "fleet run books --resume RUN"} <= cmds, sorted(cmds)
    runner = CliRunner()
    bad = []
    for where, line in quoted:
        tokens = shlex.split(line)[1:]
        try:
            _resolve(tokens)
        except UsageError as exc:
            bad.append(f"{where}: `{line}`: {exc.format_message()}")
            continue
        res = runner.invoke(app, [*tokens, "--help"])
        if res.exit_code != 0:
            bad.append(f"{where}: `{line}` --help exits {res.exit_code}: {res.output[-300:]}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("line", ["fleet breakers books", "fleet replay books --keys K",
                                  "fleet breakers reset books DOMAIN EXTRA", "fleet run books --resume"])
def test_the_command_check_refuses_what_the_cli_refuses(line: str) -> None:
    with pytest.raises(UsageError):
        _resolve(shlex.split(line)[1:])
