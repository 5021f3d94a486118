"""The Docker image, built and run: non-root, healthy, writing its output with tight modes.

Runs where a Docker daemon answers and the base image (``python:3.11-slim``) is already on the
machine; the test never pulls it (CI reaches no registry but PyPI's and Debian's), so it skips
elsewhere. The build itself fetches the Python packages from PyPI. The container shares the
host's network namespace so that it reaches a test broker on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.live import Feed, make_feed, publish_all
from tests.mosquitto import Broker, free_port

ROOT = Path(__file__).resolve().parents[1]
BASE = "python:3.11-slim"
TAG = "streamproc:test"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("mosquitto_bin")]


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if docker("info").returncode != 0:
        pytest.skip("no Docker daemon answers")
    if docker("image", "inspect", BASE).returncode != 0:
        pytest.skip(f"the base image {BASE} is not on this machine (the test does not pull it)")
    built = docker("build", "-t", TAG, str(ROOT), timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return TAG


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except OSError:
        return 0


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_image_runs_the_daemon_as_a_non_root_user(image: str, tmp_path: Path) -> None:
    """``id`` in the image is uid 10001; the daemon in a container reaches a real broker,
    answers /healthz, processes every reading of a feed, writes output owned by 10001 with
    modes 0640/0750, and stops cleanly on ``docker stop``. The image's HEALTHCHECK command,
    run in the container against this test's metrics port, passes."""
    uid = docker("run", "--rm", "--entrypoint", "id", image, "-u")
    assert uid.returncode == 0 and uid.stdout.strip() == "10001", uid
    feed: Feed = make_feed(tmp_path / "feed", channels=100, duration_s=6 * 3600)
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the volume must be writable by uid 10001
    config = tmp_path / "config.toml"
    config.write_text("[checkpoint]\ninterval_s = 2.0\n")
    config.chmod(0o644)
    port = free_port()
    name = f"streamproc-test-{port}"
    with Broker(tmp_path / "mq", max_queued_messages=0) as broker:
        run = docker("run", "-d", "--name", name, "--network", "host",
                     "-v", f"{config}:/etc/streamproc/config.toml:ro",
                     "-v", f"{out}:/var/lib/streamproc", image,
                     "run", "-c", "/etc/streamproc/config.toml", "--broker", broker.url,
                     "--out", "/var/lib/streamproc", "--metrics", f"127.0.0.1:{port}")  # fmt: skip
        assert run.returncode == 0, run.stderr
        try:
            deadline = time.monotonic() + 60
            while _health(port) != 200:
                assert time.monotonic() < deadline, docker("logs", name).stderr[-3000:]
                time.sleep(0.1)
            # the container's first process is the daemon (ENTRYPOINT in exec form)
            status = docker("exec", name, "cat", "/proc/1/status", "/proc/1/cmdline").stdout
            assert "\nUid:\t10001\t10001\t10001\t10001\n" in status, status
            assert "streamproc\x00run\x00" in status
            publish_all(broker.url, feed.messages)
            deadline = time.monotonic() + 60
            while _metric(port, "streamproc_readings_total") < feed.readings:
                assert time.monotonic() < deadline, docker("logs", name).stderr[-3000:]
                time.sleep(0.1)
            assert _metric(port, "streamproc_readings_total") == feed.readings
            # the image's HEALTHCHECK probes 127.0.0.1:9108, not this test's port
            probe = docker("exec", name, "python", "-c",
                           "import urllib.request; urllib.request.urlopen("
                           f"'http://127.0.0.1:{port}/healthz', timeout=4)")  # fmt: skip
            assert probe.returncode == 0, probe.stderr
            assert docker("stop", "-t", "30", name).returncode == 0
            state = docker("inspect", "-f", "{{.State.ExitCode}}", name)
            assert state.stdout.strip() == "0", docker("logs", name).stderr[-3000:]
        finally:
            docker("rm", "-f", name)
    # listed from inside the image: a user outside the group 10001 could not read the folder
    found = docker("run", "--rm", "-v", f"{out}:/data", "--entrypoint", "find", image,
                   "/data", "-mindepth", "1", "-printf", "%U %m %p\\n")  # fmt: skip
    assert found.returncode == 0, found.stderr
    rows = [line.split(" ", 2) for line in found.stdout.splitlines()]
    names = [p for _, _, p in rows]
    assert "/data/alerts.jsonl" in names and any(p.endswith(".parquet") for p in names)
    for owner, mode, path in rows:
        assert owner == "10001", path
        assert int(mode, 8) & 0o007 == 0, (path, mode)  # nothing for others
