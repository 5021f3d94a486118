"""Operations files: systemd unit, Prometheus config and rules, Grafana dashboard, Dockerfile.

Checks that run where the tools exist (systemd-analyze, promtool) and skip elsewhere; the rest
parses the files and compares them with the daemon's interface.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamproc.metrics import METRICS as DAEMON_METRICS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
UNIT = CONFIGS / "streamproc.service"
PROM_CONFIG = CONFIGS / "prometheus.yml"
PROM_RULES = CONFIGS / "prometheus-rules.yml"
DASHBOARD = CONFIGS / "grafana-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Every metric the daemon exports (histograms without their _bucket/_count/_sum suffixes).
METRICS = tuple(name for name, _, _ in DAEMON_METRICS)
METRIC_RE = re.compile(r"streamproc_[a-z_]+")
WARM_UP = (
    'python -c "from streamproc.config import load; '
    'from streamproc.detect import warm_up; warm_up(load(None))"'
)
TIMEOUT = 60


def metric_names(text: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", m) for m in METRIC_RE.findall(text)}


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def cli_parser() -> argparse.ArgumentParser:
    """The CLI parser, or a skip while the `run` subcommand does not exist yet."""
    from streamproc.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and "run" in action.choices:
            return parser
    pytest.skip("streamproc has no `run` subcommand yet")


# --- systemd ------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        assert "=" in line, f"not a key=value line: {line!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}= appears {len(found)} times"
    return found[0]


def test_unit_has_sections_and_keys() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    svc = unit["Service"]
    assert one(svc, "Type") == "notify"
    assert one(svc, "NotifyAccess") == "main"
    exec_start = one(svc, "ExecStart").split()
    assert exec_start[:2] == ["/opt/streamproc/.venv/bin/streamproc", "run"]
    assert exec_start[exec_start.index("-c") + 1] == "/etc/streamproc/config.toml"
    assert "HUP" in one(svc, "ExecReload") and "$MAINPID" in one(svc, "ExecReload")
    assert one(svc, "Restart") == "on-failure"
    assert float(one(svc, "RestartSec")) > 0
    assert 10 <= int(one(svc, "TimeoutStopSec")) <= 120
    assert one(svc, "User") == one(svc, "Group") == "streamproc"
    assert one(svc, "StateDirectory") == "streamproc"
    assert one(svc, "CacheDirectory") == "streamproc"
    assert "NUMBA_CACHE_DIR=/var/cache/streamproc/numba" in values(svc, "Environment")
    assert one(svc, "EnvironmentFile") == "-/etc/streamproc/env"
    assert one(svc, "UMask") == "0027"
    assert int(one(svc, "LimitNOFILE")) >= 4096
    if "--out" in exec_start:
        assert exec_start[exec_start.index("--out") + 1] == "/var/lib/streamproc"
    for key, expected in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
    }.items():
        assert one(svc, key) == expected, key
    assert set(one(svc, "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # numba's JIT needs writable+executable memory.
    assert values(svc, "MemoryDenyWriteExecute") in ([], ["no"], ["false"])
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def test_unit_command_line_parses() -> None:
    parser = cli_parser()
    argv = one(parse_unit(UNIT.read_text())["Service"], "ExecStart").split()[1:]
    assert parser.parse_args(argv).command == "run"


def verifiable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists on this machine."""
    text = UNIT.read_text().replace(
        "ExecStart=/opt/streamproc/.venv/bin/streamproc ", f"ExecStart={sys.executable} "
    )
    assert sys.executable in text
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_unit_verifies(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    res = run([tool, "verify", "--man=no", str(verifiable_copy(tmp_path))])
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
    assert UNIT.name not in res.stderr, res.stderr


def test_unit_is_hardened(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    res = run([tool, "security", "--offline=true", str(verifiable_copy(tmp_path))])
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    if res.returncode != 0 or found is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {res.stderr}")
    assert float(found.group(1)) <= 4.0, res.stdout


# --- Prometheus ---------------------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    res = run([need("promtool"), "check", "config", str(PROM_CONFIG)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout + res.stderr


def test_prometheus_config_scrapes_the_daemon() -> None:
    text = PROM_CONFIG.read_text()
    assert re.search(r"job_name:\s*streamproc\b", text)
    assert "127.0.0.1:9108" in text
    assert re.search(r"scrape_interval:\s*15s", text)
    assert re.search(rf"^\s*-\s*{PROM_RULES.name}\s*$", text, re.M)


def test_prometheus_rules_are_valid() -> None:
    res = run([need("promtool"), "check", "rules", str(PROM_RULES)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_prometheus_rules_use_known_metrics() -> None:
    used = metric_names(PROM_RULES.read_text())
    assert used, "no streamproc metric in the rules"
    assert used <= set(METRICS), sorted(used - set(METRICS))


def firing(*alerts: tuple[str, dict[str, str]]) -> list[dict[str, object]]:
    samples: list[dict[str, object]] = []
    for name, labels in alerts:
        all_labels = {"alertname": name, "alertstate": "firing", **labels}
        body = ", ".join(f'{k}="{v}"' for k, v in sorted(all_labels.items()))
        samples.append({"labels": f"ALERTS{{{body}}}", "value": 1})
    return samples


def test_prometheus_alerts_fire(tmp_path: Path) -> None:
    """promtool unit test: each alert fires on a broken daemon, none on a healthy one."""
    tool = need("promtool")
    a = 'job="streamproc", instance="a:9108"'

    def series(name: str, labels: str, vals: str) -> dict[str, str]:
        return {"series": f"{name}{{{labels}}}", "values": vals}

    def lag(le: str, vals: str) -> dict[str, str]:
        return series("streamproc_event_lag_seconds_bucket", f'{a}, le="{le}"', vals)

    broken = [
        series("up", 'job="streamproc", instance="down:9108"', "1x10 0x30"),
        series("up", a, "1x40"),
        series("streamproc_ready", a, "0x40"),
        series("streamproc_mqtt_connected", a, "0x40"),
        lag("1", "0x40"),
        lag("120", "0+10x40"),
        lag("+Inf", "0+10x40"),
        series("streamproc_dropped_total", f'{a}, reason="late"', "0+5x40"),
        series("streamproc_dropped_total", f'{a}, reason="out_of_order"', "0x40"),
        series("streamproc_sink_errors_total", f'{a}, sink="parquet"', "0x25 1x15"),
        series("streamproc_publish_errors_total", a, "0x40"),
        series("streamproc_checkpoint_age_seconds", a, "60+60x40"),
    ]
    healthy = [
        series("up", a, "1x40"),
        series("streamproc_ready", a, "1x40"),
        series("streamproc_mqtt_connected", a, "1x40"),
        lag("1", "0+10x40"),
        lag("120", "0+10x40"),
        lag("+Inf", "0+10x40"),
        series("streamproc_dropped_total", f'{a}, reason="late"', "0x40"),
        series("streamproc_sink_errors_total", f'{a}, sink="parquet"', "0x40"),
        series("streamproc_publish_errors_total", a, "0x40"),
        series("streamproc_checkpoint_age_seconds", a, "60x40"),
    ]
    labels = {"job": "streamproc", "instance": "a:9108"}
    expected = firing(
        ("StreamprocDown", {"job": "streamproc", "instance": "down:9108", "severity": "critical"}),
        ("StreamprocNotReady", {**labels, "severity": "critical"}),
        ("StreamprocMqttDisconnected", {**labels, "severity": "critical"}),
        ("StreamprocHighEventLag", {**labels, "severity": "warning"}),
        ("StreamprocDroppedReadings", {**labels, "reason": "late", "severity": "warning"}),
        ("StreamprocSinkErrors", {**labels, "sink": "parquet", "severity": "critical"}),
        ("StreamprocCheckpointStale", {**labels, "severity": "warning"}),
    )
    query = 'ALERTS{alertstate="firing"}'
    tests = {
        "rule_files": [str(PROM_RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": broken,
                "promql_expr_test": [
                    # only the MQTT alert has fired by then (2 minutes disconnected)
                    {"expr": query, "eval_time": "1m", "exp_samples": []},
                    {"expr": query, "eval_time": "3m", "exp_samples": expected[2:3]},
                    {"expr": query, "eval_time": "30m", "exp_samples": expected},
                    {
                        "expr": "streamproc:event_lag_seconds:p99_5m > bool 100",
                        "eval_time": "30m",
                        "exp_samples": [{"labels": f"{{{a}}}", "value": 1}],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": healthy,
                "promql_expr_test": [{"expr": query, "eval_time": "30m", "exp_samples": []}],
            },
        ],
    }
    path = tmp_path / "rules_test.yml"
    path.write_text(json.dumps(tests, indent=1))  # JSON is YAML
    res = run([tool, "test", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


# --- Grafana ------------------------------------------------------------------------------


def dashboard_panels() -> list[dict[str, Any]]:
    def walk(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for p in panels:
            out.append(p)
            out.extend(walk(p.get("panels", [])))
        return out

    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return walk(panels)


def panel_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def test_dashboard_loads() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "streamproc"
    assert 36 <= dash["schemaVersion"] <= 41
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert x >= 0 and x + w <= 24, p["title"]
        mine = {(cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        targets = p["targets"]
        assert targets, f"panel {p['title']!r} has no query"
        for t in targets:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert t["expr"].strip(), p["title"]


def test_dashboard_uses_known_metrics() -> None:
    used: set[str] = set()
    for expr in panel_exprs():
        names = metric_names(expr)
        assert names, f"no streamproc metric in {expr!r}"
        used |= names
    used |= metric_names(json.dumps(json.loads(DASHBOARD.read_text())["templating"]))
    assert used <= set(METRICS), sorted(used - set(METRICS))


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel query, with Grafana's variables filled in, is valid PromQL."""
    tool = need("promtool")
    rules = []
    for i, expr in enumerate(panel_exprs()):
        filled = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
        rules.append({"record": f"panel_{i}", "expr": filled.replace("$instance", ".*")})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = run([tool, "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


# --- Docker -------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        if pending or raw.strip():
            lines.append(pending + raw)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    ins = instructions()
    kinds = [k for k, _ in ins]
    froms = [v for k, v in ins if k == "FROM"]
    assert froms and all(f.split()[0].startswith("python:3.11-slim") for f in froms), froms
    assert ":latest" not in DOCKERFILE.read_text()

    cmd_at = kinds.index("CMD")
    users = [v for k, v in ins[:cmd_at] if k == "USER"]
    assert users, "no USER before CMD"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]

    envs = " ".join(v for k, v in ins if k == "ENV")
    for var in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "NUMBA_CACHE_DIR="):
        assert var in envs, var
    for k, v in ins:
        if k == "RUN" and "pip install" in v:
            assert "--no-cache-dir" in v, v

    warm = [i for i, (k, v) in enumerate(ins) if k == "RUN" and WARM_UP in v]
    assert warm, "no build-time numba warm-up"
    last_user = max(i for i, (k, _) in enumerate(ins) if k == "USER")
    assert warm[-1] > last_user, "the warm-up must run as the daemon's user"

    health = [v for k, v in ins if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "urllib" in health[0]
    assert any(k == "EXPOSE" and "9108" in v.split() for k, v in ins)

    entry = json.loads(dict(ins)["ENTRYPOINT"])
    cmd = json.loads(dict(ins)["CMD"])
    assert entry == ["streamproc"]
    assert cmd[:3] == ["run", "-c", "/etc/streamproc/config.toml"]
    assert cmd[cmd.index("--metrics") + 1] == "0.0.0.0:9108"

    for k, v in ins:
        if k == "COPY" and not v.startswith("--from"):
            for src in v.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} is missing"
    assert "!streamproc" in DOCKERIGNORE.read_text().split()


def test_docker_command_line_parses() -> None:
    parser = cli_parser()
    argv = json.loads(dict(instructions())["CMD"])
    assert parser.parse_args(argv).command == "run"


def test_warm_up_line_imports() -> None:
    from streamproc.config import load
    from streamproc.detect import warm_up

    assert callable(load) and callable(warm_up)
