"""Fixtures of the paramex Python tests: real paramex-server processes on ephemeral
loopback ports (their readiness line gives the port), stopped by PID at the end.

Run by meson (`meson test -C build python`), which sets PYTHONPATH to BUILD/python and
PMX_SERVER_BIN / PMX_LIBPARAMEX to the built binaries."""
import os

import pytest

from pxserver import servers, wait_until, WAIT_S  # noqa: F401 (the tests import them here)

LIBPARAMEX = os.environ.get("PMX_LIBPARAMEX", "")


@pytest.fixture
def server():
    """server(*args) starts a paramex-server; every one is stopped at the test's end."""
    yield from servers()


