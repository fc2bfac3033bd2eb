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

settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")
