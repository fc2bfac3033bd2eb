"""jaxcnn.host: glibc malloc tuning, applied by the command, opted out by the environment."""

from __future__ import annotations

import platform

import pytest

from jaxcnn import host


def test_malloc_tuning_is_applied_on_glibc_and_a_no_op_elsewhere(monkeypatch):
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert host.tune_malloc() is True  # every mallopt setting accepted
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert host.tune_malloc() is False


@pytest.mark.parametrize(("value", "requested"), [(None, True), ("1", True), ("0", False), ("no", False)])
def test_the_environment_opts_out(monkeypatch, value, requested):
    if value is None:
        monkeypatch.delenv(host.ENV, raising=False)
    else:
        monkeypatch.setenv(host.ENV, value)
    assert host.malloc_tuning_requested() is requested
