"""`jaxcnn info`: the versions, the devices, the oneDNN extension's state and the lowerings, as text
and as JSON; the library function behind it."""

from __future__ import annotations

import json

import flax
import jax
import jaxlib
import pytest

import jaxcnn.onednn
from jaxcnn.about import about, about_text
from jaxcnn.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def with_onednn(monkeypatch):
    facts = {"available": True, "reason": None, "onednn_version": "3.2.0", "isa": "avx512_core_bf16",
             "bfloat16": True}
    monkeypatch.setattr(jaxcnn.onednn, "available", lambda: True)
    monkeypatch.setattr(jaxcnn.onednn, "unavailable_reason", lambda: None)
    monkeypatch.setattr(jaxcnn.onednn, "info", lambda: facts)


@pytest.fixture
def without_onednn(monkeypatch):
    reason = "oneDNN kernels are built for x86-64 Linux only, not darwin arm64"
    monkeypatch.setattr(jaxcnn.onednn, "available", lambda: False)
    monkeypatch.setattr(jaxcnn.onednn, "unavailable_reason", lambda: reason)
    monkeypatch.setattr(jaxcnn.onednn, "info", lambda: {"available": False, "reason": reason, "onednn_version": None,
                                                         "isa": None, "bfloat16": False})


def test_info_prints_the_versions_devices_and_lowerings_with_onednn(capsys, with_onednn):
    if jax.default_backend() != "cpu":
        pytest.skip("oneDNN is a CPU lowering")
    code, out, err = run(capsys, "info")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == (f"jaxcnn {jaxcnn.__version__} (Python {lines[0].split('Python ')[1].split(';')[0]}; "
                        f"jax {jax.__version__}, jaxlib {jaxlib.version.__version__}, flax {flax.__version__})")
    n = len(jax.devices())
    assert lines[1].startswith(f"backend: cpu, {n} device{'s' if n > 1 else ''}: {jax.devices()[0]}")
    assert lines[2] == "oneDNN extension: available: oneDNN 3.2.0, ISA avx512_core_bf16, with bfloat16 kernels"
    assert lines[3:] == [
        "lowerings here:",
        "  Conv2D: lax.conv, patches, onednn",
        "  grouped Conv2D, Conv2DTranspose: lax.conv, onednn",
        "  DepthwiseConv2D, SeparableConv2D: lax.conv, shifted, onednn",
        "  MaxPooling2D, AveragePooling2D: reduce_window, reshape, onednn",
    ]


def test_info_says_why_onednn_is_missing_and_lists_only_xla_lowerings(capsys, without_onednn):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert ("oneDNN extension: not available: oneDNN kernels are built for x86-64 Linux only, not darwin arm64"
            in out.splitlines())
    assert "  Conv2D: lax.conv, patches" in out.splitlines() and "onednn" not in out.split("lowerings here:")[1]
    assert "  DepthwiseConv2D, SeparableConv2D: lax.conv, shifted" in out.splitlines()


def test_info_json_has_every_fact_the_text_has(capsys, with_onednn):
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts == about()
    assert (facts["jax"], facts["flax"], facts["backend"]) == (jax.__version__, flax.__version__,
                                                              jax.default_backend())
    assert facts["devices"] == [str(d) for d in jax.devices()]
    assert facts["onednn"]["onednn_version"] == "3.2.0" and facts["onednn"]["bfloat16"] is True
    assert facts["lowerings"]["pooling"][:2] == ["reduce_window", "reshape"]
    assert about_text(facts) == run(capsys, "info")[1].rstrip("\n")


def test_info_with_the_real_extension_agrees_with_its_module(capsys):
    facts = json.loads(run(capsys, "info", "--json")[1])
    assert facts["onednn"] == json.loads(json.dumps(jaxcnn.onednn.info()))
    usable = jaxcnn.onednn.available() and jax.default_backend() == "cpu"
    assert ("onednn" in facts["lowerings"]["convolution"]) == usable
