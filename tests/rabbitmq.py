"""A private RabbitMQ node with its MQTT plugin, for tests that need a broker which writes a
QoS 1 message to disk before it acknowledges it (RabbitMQ sends the PUBACK on the publisher
confirm, which for a persistent message in a durable queue comes once the message is on disk).

The node listens for MQTT 3.1.1 on 127.0.0.1:<free port> only (no AMQP listener), keeps its
database in its work folder (so `kill()` + `start()` restarts it with what it had saved), and
registers with the machine's epmd under a name of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.mosquitto import HOST, _accepts, _Server, _tail, _terminate, free_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # Debian's: runs as the calling user
START_TIMEOUT = 60.0


def available() -> bool:
    return SERVER.is_file() and any(
        p.name.startswith("rabbitmq_mqtt-") for p in SERVER.parent.parent.glob("lib/*/plugins/*")
    )


class RabbitMQ(_Server):
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.node = f"streamproc{self.port}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def start(self) -> None:
        """Start the node; return once its MQTT listener accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "rabbitmq.conf"
        config.write_text(
            "listeners.tcp = none\n"
            f"mqtt.listeners.tcp.default = {HOST}:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
        )
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        env = {
            **os.environ,
            "HOME": str(self.workdir),  # the Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(config.with_suffix("")),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RUNNING_UNDER_SYSTEMD": "1",  # exec the VM: this process is the broker
        }
        with (self.workdir / "rabbitmq.out").open("ab") as out:
            self._proc = subprocess.Popen(
                [str(SERVER)], env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True,
            )  # fmt: skip
        self._wait_ready(lambda: _accepts(self.port), "RabbitMQ", START_TIMEOUT)

    def stop(self) -> None:
        _terminate(self._proc, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group (the VM and its helper processes)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    _end = kill

    def log_text(self) -> str:
        return _tail(self.workdir / "rabbitmq.out", 60)
