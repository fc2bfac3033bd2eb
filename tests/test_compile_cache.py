"""The persistent compilation cache (jaxcnn.compile_cache): where the `jaxcnn` command puts it, how the
environment moves or disables it, and that a second `jaxcnn train` run's first step is a cache hit by
JAX's own account (its jax.monitoring events and its log line), not by a timing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from jaxcnn import compile_cache

from conftest import ROOT

TINY = """
[model]
name = "tiny"
input_shape = [8, 8, 1]

[[layers]]
type = "Conv2D"
filters = 4
kernel_size = 3
padding = "same"
activation = "relu"

[[layers]]
type = "MaxPooling2D"

[[layers]]
type = "Flatten"

[[layers]]
type = "Dense"
units = 10
activation = "softmax"

[data]
name = "digits"
validation = 0.1
test = 0.1

[train]
epochs = 1
batch_size = 64
"""


def _environment(tmp_path: pathlib.Path, **settings: str | None) -> dict[str, str]:
    """This process's environment with ``XDG_CACHE_HOME`` in ``tmp_path`` and ``settings`` applied
    (``None`` removes a variable); the cache variables of JAX and jaxcnn unset unless given."""
    env = {k: v for k, v in os.environ.items()
           if k not in (compile_cache.ENV, "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(ROOT))
    env.update({k: v for k, v in settings.items() if v is not None})
    return env


def _enable_in_a_fresh_process(env: dict[str, str]) -> str:
    """What :func:`compile_cache.enable` returns in a new process, and JAX's cache folder then."""
    code = ("import jax; from jaxcnn import compile_cache; "
            "print(compile_cache.enable(), jax.config.jax_compilation_cache_dir, "
            "jax.config.jax_persistent_cache_min_compile_time_secs)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_default_folder_follows_xdg_cache_home(tmp_path):
    folder = tmp_path / "xdg" / "jaxcnn" / "xla"
    assert _enable_in_a_fresh_process(_environment(tmp_path)) == f"{folder} {folder} 0.1"


def test_the_environment_names_another_folder_or_turns_the_cache_off(tmp_path):
    mine = tmp_path / "mine"
    assert _enable_in_a_fresh_process(_environment(tmp_path, JAXCNN_COMPILATION_CACHE=str(mine))) == \
        f"{mine} {mine} 0.1"
    for off in ("0", "off", "OFF", "no"):
        assert _enable_in_a_fresh_process(_environment(tmp_path, JAXCNN_COMPILATION_CACHE=off)) == \
            "None None 1.0"  # JAX's defaults untouched


def test_a_cache_given_to_jax_itself_is_left_alone(tmp_path):
    env = _environment(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"),
                       JAXCNN_COMPILATION_CACHE=str(tmp_path / "mine"))
    assert _enable_in_a_fresh_process(env) == f"{tmp_path / 'jax'} {tmp_path / 'jax'} 1.0"


@pytest.mark.parametrize(("value", "expected"), [("", "default"), ("  ", "default"), ("off", None),
                                                 ("False", None), ("~/x", "home")])
def test_requested_directory(monkeypatch, tmp_path, value, expected):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(compile_cache.ENV, value)
    wanted = {"default": tmp_path / "jaxcnn" / "xla", None: None,
              "home": pathlib.Path(os.path.expanduser("~")) / "x"}[expected]
    assert compile_cache.requested_directory() == wanted


def test_the_default_folder_without_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compile_cache.default_directory() == tmp_path / ".cache" / "jaxcnn" / "xla"


def test_cache_events_count_jax_monitoring_events_only_inside_the_block():
    hit, miss = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
    with compile_cache.CacheEvents() as events:
        assert events.outcome == "off"
        jax.monitoring.record_event(hit)
        jax.monitoring.record_event("/jax/compilation_cache/compile_requests_use_cache")
        assert (events.hits, events.misses, events.outcome) == (1, 0, "hit")
        jax.monitoring.record_event(miss)
    jax.monitoring.record_event(miss)  # after the block: not counted
    assert (events.hits, events.misses, events.outcome) == (1, 1, "miss")


def _train(config: pathlib.Path, workdir: pathlib.Path, env: dict[str, str]) -> tuple[dict, str]:
    """One `jaxcnn train` run in its own process, with JAX logging its compilations: its
    results.json and its stderr."""
    out = subprocess.run([sys.executable, "-m", "jaxcnn", "train", str(config), "--workdir", str(workdir), "--quiet"],
                         env={**env, "JAX_LOG_COMPILES": "1"}, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads((workdir / "results.json").read_text()), out.stderr


def test_a_second_run_s_first_step_is_a_cache_hit(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    env = _environment(tmp_path, JAXCNN_COMPILATION_CACHE=str(tmp_path / "cache"))
    first, log = _train(config, tmp_path / "first", env)
    assert first["first_step_cache"] == "miss"
    assert "Persistent compilation cache hit" not in log
    entries = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert "jit__train_step" in entries and "jit__init_from_key" in entries

    second, log = _train(config, tmp_path / "second", env)
    assert second["first_step_cache"] == "hit"  # counted from jax.monitoring's cache_hits/cache_misses
    assert "Persistent compilation cache hit for 'jit__train_step'" in log  # JAX's own log line
    assert second["params_sha256"] == first["params_sha256"]  # the loaded program computes the same


def test_a_disabled_cache_writes_nothing(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    results, log = _train(config, tmp_path / "run", _environment(tmp_path, JAXCNN_COMPILATION_CACHE="off"))
    assert results["first_step_cache"] == "off"
    assert "compilation cache" not in log.lower()
    assert not (tmp_path / "xdg" / "jaxcnn").exists()  # (matplotlib keeps its font list in xdg/)
