"""Shared fixtures: real mosquitto and Prometheus processes, skipped when not installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import Broker, Certs, find_binary, make_certs


def require_binary(name: str) -> str:
    """Path of `name` (PATH or the sbin folders), or skip the test with the reason."""
    path = find_binary(name)
    if path is None:
        pytest.skip(f"{name} is not installed (not on PATH nor in /usr/sbin)")
    return path


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    return require_binary("mosquitto")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return require_binary("prometheus")


@pytest.fixture
def broker(tmp_path: Path, mosquitto_bin: str) -> Iterator[Broker]:
    """A started anonymous mosquitto in tmp_path."""
    with Broker(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """A test CA with a server certificate for 127.0.0.1/localhost and a client certificate."""
    require_binary("openssl")
    return make_certs(tmp_path / "certs")
