"""Shared test helpers: paths to the fixtures and the seed notebooks, the hypothesis profile."""

from __future__ import annotations

import os
import pathlib

from hypothesis import HealthCheck, settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
KERAS_FIXTURES = DATA / "keras"
SEEDS = DATA / "seeds"
CONFIGS = ROOT / "configs"

# The `jaxcnn` command turns JAX's persistent compilation cache on (jaxcnn.compile_cache); tests that
# call it, in this process or in subprocesses, must not write into the user's cache folder.
# tests/test_compile_cache.py turns it on for its own subprocesses, in tmp_path.
os.environ["JAXCNN_COMPILATION_CACHE"] = "off"

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")
