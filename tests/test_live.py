"""The live daemon against a real mosquitto (and Prometheus) that the tests start themselves:
messages in -> alerts out on MQTT and in the log, counted; authentication and TLS; a broker
restart; SIGTERM and restart from the checkpoint; record then replay; SIGHUP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.live import DaemonProcess, Feed, collect, make_feed, publish_all
from tests.mosquitto import Broker, Certs, Prometheus

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("mosquitto_bin")]


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Feed:
    """Half a simulated day of 300 channels, about 23k messages and 40 alert events."""
    return make_feed(tmp_path_factory.mktemp("feed"))


def _alert_ids(lines: list[str]) -> list[tuple[str, str]]:
    return [(d["id"], d["event"]) for d in map(json.loads, lines)]


def _daemon(
    tmp: Path, broker: Broker, *extra: str, env: dict[str, str] | None = None, name: str = "daemon"
) -> DaemonProcess:
    args = ["run", "--broker", broker.url, "--out", str(tmp / "out"), *extra]
    return DaemonProcess(tmp / name, args, env)


def test_messages_in_alerts_out(tmp_path: Path, broker: Broker, feed: Feed) -> None:
    collect(broker.port, "watcher", ["streamproc/alerts/#"], quiet_s=0.1)  # the session to queue
    d = _daemon(tmp_path, broker).start()
    try:
        d.wait_ready()
        assert d.value("streamproc_mqtt_connected") == 1
        n = publish_all(broker.url, feed.messages)
        assert n == len(feed.messages)
        d.wait_messages(n)
        d.wait_readings(feed.readings)
        assert d.value("streamproc_messages_total", result="ok") == n
        assert d.value("streamproc_readings_total") == feed.readings
        assert d.value("streamproc_dropped_total") == 0
        opened = sum(1 for _, e in _alert_ids(feed.alert_lines) if e == "open")
        assert d.value("streamproc_alerts_total") == opened
        assert d.stop() == 0
    finally:
        d.kill()
    lines = (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()
    assert lines == feed.alert_lines  # the live run raised exactly the replay's alerts
    on_mqtt = collect(broker.port, "watcher", ["streamproc/alerts/#"])
    assert [orjson.loads(p) for _, p, _ in on_mqtt] == [json.loads(x) for x in lines]
    a = json.loads(lines[0])
    assert (
        on_mqtt[0][0] == f"streamproc/alerts/{a['kind']}/{a['group']}/{a['device']}/{a['metric']}"
    )
    # retained state: exactly the alerts still open at the end
    still_open = {}
    for x in map(json.loads, lines):
        key = (x["device"], x["metric"], x["rule"])
        if x["event"] == "resolve":
            still_open.pop(key, None)
        else:
            still_open[key] = x["id"]
    state = collect(broker.port, "dashboard", ["streamproc/state/#"], quiet_s=0.5)
    assert all(retained for _, _, retained in state)
    assert sorted(orjson.loads(p)["id"] for _, p, _ in state) == sorted(still_open.values())
    assert len(list((tmp_path / "out" / "snapshots").rglob("*.parquet"))) > 100


def test_username_password(tmp_path: Path, mosquitto_bin: str, feed: Feed) -> None:
    secret = "s3cret-Pa55"
    with Broker(tmp_path / "mq", users={"alice": secret}) as broker:
        url = broker.url.replace("mqtt://", "mqtt://alice@")
        wrong = DaemonProcess(
            tmp_path / "wrong",
            ["run", "--broker", url, "--out", str(tmp_path / "o1")],
            {"STREAMPROC_MQTT_PASSWORD": "nope"},
        )
        wrong.start()
        try:
            wrong.wait_until("a refused connection", lambda: "cannot connect" in wrong.log())
            status, reason = wrong.health() or (0, "")
            assert status == 503 and "not connected" in reason
            assert wrong.stop() == 0
        finally:
            wrong.kill()
        env = {"STREAMPROC_MQTT_PASSWORD": secret}
        d = DaemonProcess(
            tmp_path / "right", ["run", "--broker", url, "--out", str(tmp_path / "o2")], env
        ).start()
        try:
            d.wait_ready()
            part = feed.messages[:3000]
            assert publish_all(
                broker.url, part, username="alice", password_file=_pw(tmp_path, secret)
            ) == len(part)
            d.wait_messages(len(part))
            assert d.value("streamproc_messages_total", result="ok") == len(part)
            assert d.stop() == 0
        finally:
            d.kill()
        for log in (wrong.log(), d.log()):
            assert secret not in log and "nope" not in log
            assert "alice@" in log  # the user is named, the password never


def _pw(tmp: Path, secret: str) -> str:
    path = tmp / "password"
    path.write_text(secret + "\n")
    return str(path)


def test_tls_with_client_certificate(
    tmp_path: Path, mosquitto_bin: str, certs: Certs, feed: Feed
) -> None:
    config = tmp_path / "tls.toml"
    config.write_text(
        f'[mqtt]\nca_file = "{certs.ca}"\ncert_file = "{certs.client_cert}"\n'
        f'key_file = "{certs.client_key}"\n'
    )
    with Broker(tmp_path / "mq", tls=certs, require_client_cert=True) as broker:
        assert broker.url.startswith("mqtts://")
        d = _daemon(tmp_path, broker, "-c", str(config)).start()
        try:
            d.wait_ready()
            part = feed.messages[:3000]
            tls = {
                "ca_file": str(certs.ca),
                "cert_file": str(certs.client_cert),
                "key_file": str(certs.client_key),
            }
            assert publish_all(broker.url, part, **tls) == len(part)
            d.wait_messages(len(part))
            assert d.value("streamproc_messages_total", result="ok") == len(part)
            assert d.stop() == 0
        finally:
            d.kill()


def test_tls_verifies_the_broker(tmp_path: Path, mosquitto_bin: str, certs: Certs) -> None:
    """Without the test CA the broker's certificate is not trusted: no connection."""
    with Broker(tmp_path / "mq", tls=certs) as broker:
        d = _daemon(tmp_path, broker).start()
        try:
            d.wait_until("a refused TLS handshake", lambda: "CERTIFICATE_VERIFY_FAILED" in d.log())
            assert (d.health() or (0, ""))[0] == 503
            assert d.stop() == 0
        finally:
            d.kill()


def test_broker_restart_loses_nothing(tmp_path: Path, broker: Broker, feed: Feed) -> None:
    """QoS 1 and a persistent session: readings published before, during and after a broker
    restart are all processed, once."""
    d = _daemon(tmp_path, broker).start()
    try:
        d.wait_ready()
        first, second = feed.messages[:8000], feed.messages[8000:16000]
        publish_all(broker.url, first)
        d.wait_messages(len(first))
        broker.stop()
        d.wait_until("the daemon to notice", lambda: d.value("streamproc_mqtt_connected") == 0)
        broker.restart()
        publish_all(broker.url, second)  # the daemon is away or just back
        d.wait_messages(len(first) + len(second))
        assert d.value("streamproc_messages_total", result="ok") == len(first) + len(second)
        assert d.value("streamproc_dropped_total") == 0
        assert d.value("streamproc_mqtt_reconnects_total") >= 1
        d.wait_ready()
        assert d.stop() == 0
    finally:
        d.kill()


def test_sigterm_and_restart_resume_from_the_checkpoint(
    tmp_path: Path, broker: Broker, feed: Feed
) -> None:
    cut = len(feed.messages) * 2 // 3
    d = _daemon(tmp_path, broker).start()
    try:
        d.wait_ready()
        publish_all(broker.url, feed.messages[:cut])
        d.wait_messages(cut)
        assert d.stop(timeout=10) == 0
    finally:
        d.kill()
    assert (tmp_path / "out" / "state" / "checkpoint.npz").exists()
    d = _daemon(tmp_path, broker, name="again").start()
    try:
        d.wait_ready()
        assert "restored" in d.log()
        publish_all(broker.url, feed.messages[cut:])
        d.wait_messages(len(feed.messages) - cut)
        assert d.stop(timeout=10) == 0
    finally:
        d.kill()
    lines = (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()
    assert lines == feed.alert_lines  # no spurious, missing or repeated alerts


def test_record_then_replay_gives_the_live_alerts(
    tmp_path: Path, broker: Broker, feed: Feed
) -> None:
    recording = tmp_path / "recorded.parquet"
    rec = DaemonProcess(tmp_path / "rec", ["record", "--broker", broker.url, "-o", str(recording)])
    rec.args = rec.args[:-2]  # record serves no metrics
    rec.start()
    d = _daemon(tmp_path, broker).start()
    try:
        d.wait_ready()
        rec.wait_until("the recorder", lambda: "recording to" in rec.log())
        publish_all(broker.url, feed.messages)
        d.wait_messages(len(feed.messages))
        assert d.stop() == 0
        assert rec.stop() == 0
    finally:
        d.kill()
        rec.kill()
    assert f"recorded {len(feed.messages)} messages" in rec.log()
    out = tmp_path / "replayed"
    replay = [sys.executable, "-m", "streamproc.cli", "replay", str(recording), "-o", str(out)]
    subprocess.run(replay, check=True, capture_output=True, timeout=300)
    live = (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()
    again = (tmp_path / "replayed" / "alerts.jsonl").read_text().splitlines()
    assert len(live) > 20
    assert again == live


def test_prometheus_scrapes_the_daemon(
    tmp_path: Path, broker: Broker, feed: Feed, prometheus_bin: str
) -> None:
    d = _daemon(tmp_path, broker).start()
    try:
        d.wait_ready()
        with Prometheus(tmp_path / "prom", [f"127.0.0.1:{d.metrics_port}"]) as prom:
            publish_all(broker.url, feed.messages)
            d.wait_readings(feed.readings)
            got = prom.wait_value("streamproc_readings_total", feed.readings, timeout=30)
            assert got == feed.readings
            up = prom.query('up{job="streamproc"}')
            assert up and up[0][1] == 1
        assert d.stop() == 0
    finally:
        d.kill()


def test_sighup_reloads_and_a_bad_file_is_refused(tmp_path: Path, broker: Broker) -> None:
    config = tmp_path / "city.toml"
    config.write_text("[rules.zscore]\nz_open = 6.0\n")
    d = _daemon(tmp_path, broker, "-c", str(config)).start()
    try:
        d.wait_ready()
        config.write_text("[rules.zscore]\nz_open = 7.0\n[snapshots]\ninterval_s = 600.0\n")
        d.signal(signal.SIGHUP)
        d.wait_until("the reload", lambda: "reloaded" in d.log())
        assert "[snapshots] need a restart" in d.log()
        config.write_text("[rules.zscore]\nz_open = -1\n")
        d.signal(signal.SIGHUP)
        d.wait_until("the refusal", lambda: "reload refused" in d.log())
        assert (d.health() or (0, ""))[0] == 200
        assert d.stop() == 0
    finally:
        d.kill()


def test_mqtt_311_and_qos_0(tmp_path: Path, broker: Broker, feed: Feed) -> None:
    config = tmp_path / "v311.toml"
    config.write_text('[mqtt]\nprotocol = "3.1.1"\n')
    d = _daemon(tmp_path, broker, "-c", str(config), "--qos", "0").start()
    try:
        d.wait_ready()
        part = feed.messages[:5000]
        assert publish_all(broker.url, part, qos=0, protocol="3.1.1") == len(part)
        d.wait_messages(len(part))
        assert d.value("streamproc_messages_total", result="ok") == len(part)
        assert d.stop() == 0
    finally:
        d.kill()
    assert "subscribed to city/+/+/+/+, city/+/+/+ with QoS [0, 0]" in d.log()


def test_simulate_publish(tmp_path: Path, broker: Broker) -> None:
    """``streamproc simulate --publish`` feeds a running daemon: every message arrives."""
    d = _daemon(tmp_path, broker).start()
    try:
        d.wait_ready()
        cmd = [
            sys.executable,
            "-m",
            "streamproc.cli",
            "simulate",
            "--channels",
            "60",
            "--duration",
            "2h",
            "--publish",
            broker.url,
            "--rate",
            "5000",
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        sent = int(done.stdout.rsplit("published ", 1)[1].split()[0].replace(",", ""))
        assert sent > 500
        d.wait_messages(sent)
        assert d.value("streamproc_messages_total", result="ok") == sent
        assert d.stop() == 0
    finally:
        d.kill()


def test_periodic_checkpoints_while_running(tmp_path: Path, broker: Broker, feed: Feed) -> None:
    config = tmp_path / "ck.toml"
    config.write_text("[checkpoint]\ninterval_s = 0.3\n")
    d = _daemon(tmp_path, broker, "-c", str(config)).start()
    try:
        d.wait_ready()
        publish_all(broker.url, feed.messages[:5000])
        d.wait_messages(5000)
        done = d.value("streamproc_checkpoint_seconds_count")
        d.wait_until(
            "two more checkpoints",
            lambda: d.value("streamproc_checkpoint_seconds_count") >= done + 2,
        )
        assert d.value("streamproc_checkpoint_age_seconds") < 5
        assert d.value("streamproc_sink_errors_total") == 0
        path = tmp_path / "out" / "state" / "checkpoint.npz"
        assert path.exists() and path.stat().st_mode & 0o777 == 0o640
        assert d.stop() == 0
    finally:
        d.kill()
