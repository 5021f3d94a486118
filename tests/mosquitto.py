"""Real processes for integration tests and benchmarks: mosquitto, Prometheus, test certificates.

Everything listens on 127.0.0.1 on a free port and keeps its files in a given work folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_binary(name: str) -> str | None:
    """Path of executable `name` on PATH or in the sbin folders (mosquitto lives in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _run(args: Sequence[str | Path]) -> None:
    """Run a command; raise with its output when it fails."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stderr}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _terminate(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    """Send `sig` and wait; escalate to SIGKILL if the process does not exit."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    """PEM files of a test CA, a server certificate for localhost and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certs(folder: Path) -> Certs:
    """Make a CA, a server certificate (CN=localhost, SAN 127.0.0.1) and a client certificate.

    EC keys on prime256v1, valid for two days, made with the openssl command.
    """
    folder.mkdir(parents=True, exist_ok=True)
    openssl = find_binary("openssl") or "openssl"
    config = folder / "openssl.cnf"
    config.write_text(_CONFIG)
    certs = Certs(
        ca=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
    )
    ca_key = folder / "ca.key"
    for key in (ca_key, certs.server_key, certs.client_key):
        _run([openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    ca_args = ["-x509", "-key", ca_key, "-out", certs.ca, "-subj", "/CN=streamproc test CA"]
    _run([openssl, "req", "-new", *ca_args, "-days", "2", "-config", config, "-extensions", "ca"])
    leaves = [
        ("server", "/CN=localhost", certs.server_key, certs.server_cert),
        ("client", "/CN=streamproc-test-client", certs.client_key, certs.client_cert),
    ]
    for section, subject, key, crt in leaves:
        csr = folder / f"{section}.csr"
        _run(
            [openssl, "req", "-new", "-key", key, "-out", csr, "-subj", subject, "-config", config]
        )
        sign = ["-CA", certs.ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-sha256"]
        ext = ["-extfile", config, "-extensions", section]
        _run([openssl, "x509", "-req", "-in", csr, "-out", crt, *sign, *ext])
    return certs


# --- mosquitto ----------------------------------------------------------------------------------


class _Server:
    """A server process the tests start: a context manager that always ends it."""

    _proc: subprocess.Popen[bytes] | None

    def start(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def log_text(self) -> str:
        raise NotImplementedError

    def _wait_ready(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll ``ready`` until it holds; raise with the log if the process exits first, or
        end it and raise after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(f"{what} exited with {code}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self._end()
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{self.log_text()}")
            time.sleep(0.02)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class Broker(_Server):
    """A mosquitto broker on 127.0.0.1:<free port>, configured and logging in `workdir`.

    Persistence is on (the database is written on stop), so persistent sessions and their
    queued QoS 1 messages survive `restart()`, which reuses the same port. `max_queued_messages`
    (0: unlimited) bounds each client's queue; beyond it mosquitto drops and counts in
    `$SYS/broker/publish/messages/dropped`, published every `sys_interval` seconds.
    `max_inflight_messages` (mosquitto's default 20; 0: unlimited) is how many QoS 1 messages
    to a client may wait for its acknowledgement. `autosave_on_changes` saves the database
    after every change (message stored, subscription), so that little is lost to a SIGKILL.
    `tcp_nodelay` turns Nagle's algorithm off on the broker's sockets (mosquitto's default:
    on).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        tls: Certs | None = None,
        require_client_cert: bool = False,
        max_queued_messages: int = 0,
        max_inflight_messages: int = 20,
        autosave_on_changes: bool = False,
        sys_interval: int = 10,
        tcp_nodelay: bool = False,
    ) -> None:
        binary = find_binary("mosquitto")
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed")
        self.binary = binary
        self.workdir = workdir
        self.users = dict(users or {})
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.autosave_on_changes = autosave_on_changes
        self.sys_interval = sys_interval
        self.tcp_nodelay = tcp_nodelay
        self.port = free_port()
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.output_path = workdir / "mosquitto.out"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {HOST}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence true",
            f"persistence_location {data}/",
            *(
                ["autosave_on_changes true", "autosave_interval 1"]
                if self.autosave_on_changes
                else ["autosave_interval 0"]
            ),
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"sys_interval {self.sys_interval}",
            f"set_tcp_nodelay {'true' if self.tcp_nodelay else 'false'}",
            f"log_dest file {self.log_path}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto 2 drops to user `mosquitto` right after reading this file and
            # then cannot open the log, database, password file or keys in a 0700 folder.
            lines.append("user root")
        if self.users:
            passwords = self.workdir / "passwords"
            passwords.unlink(missing_ok=True)
            passwd = find_binary("mosquitto_passwd") or "mosquitto_passwd"
            for i, (name, password) in enumerate(self.users.items()):
                create = ["-c"] if i == 0 else []
                _run([passwd, *create, "-b", passwords, name, password])
            lines.append(f"password_file {passwords}")
        if self.tls:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start mosquitto; return once it accepts TCP connections on the port."""
        if self.running:
            return
        self._write_config()
        with self.output_path.open("ab") as out:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self._wait_ready(lambda: _accepts(self.port), "mosquitto", START_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM and wait: mosquitto writes its persistence database on the way out."""
        _terminate(self._proc, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: nothing is written since the last save."""
        _terminate(self._proc, signal.SIGKILL)

    _end = kill  # leaving the context: SIGKILL, the test is over

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """The broker's log file and any output it printed before opening it."""
        parts = [_tail(self.output_path, 10_000), _tail(self.log_path, 10_000)]
        return "\n".join(p for p in parts if p)


# --- Prometheus ---------------------------------------------------------------------------------

Sample = tuple[dict[str, str], float]


class Prometheus(_Server):
    """A Prometheus server on 127.0.0.1:<free port> scraping `targets` ("host:port").

    The first scrape comes about 5 s after start: Prometheus hands new targets to its scrape
    loops on a fixed 5 s tick. Later scrapes follow `scrape_interval`.
    """

    def __init__(
        self, workdir: Path, targets: Sequence[str], *, scrape_interval: float = 1.0
    ) -> None:
        binary = find_binary("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed")
        self.binary = binary
        self.workdir = workdir
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _write_config(self) -> None:
        interval = f"{max(1, round(self.scrape_interval * 1000))}ms"
        config = {  # JSON is YAML
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {"job_name": "streamproc", "static_configs": [{"targets": self.targets}]}
            ],
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def start(self) -> None:
        """Start Prometheus; return once /-/ready answers 200."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._write_config()
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_ready(self._ready, "prometheus", START_TIMEOUT)

    def log_text(self) -> str:
        return _tail(self.log_path)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        _terminate(self._proc, signal.SIGTERM)

    _end = stop

    def query(self, expr: str) -> list[Sample]:
        """Instant query: (labels, value) of each series in the result."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def wait_value(
        self,
        expr: str,
        expected: float | Callable[[float], bool],
        timeout: float = 15.0,
    ) -> float:
        """Poll `expr` until its first series equals `expected` (or satisfies it); its value."""

        def ok(value: float) -> bool:
            if callable(expected):
                return expected(value)
            return math.isclose(value, expected)

        last: list[Sample] = []
        deadline = time.monotonic() + timeout
        while True:
            last = self.query(expr)
            if last and ok(last[0][1]):
                return last[0][1]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr!r}: last result {last}")
            time.sleep(min(0.2, self.scrape_interval / 4))
