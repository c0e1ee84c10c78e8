"""Paths and helpers shared by the package tests."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
if not TARGET.is_absolute():
    TARGET = ROOT / TARGET
PROFILE = os.environ.get("CONFAB_PACKAGE_PROFILE", "debug")
BUNDLE = TARGET / PROFILE / "bundle"
ARTIFACTS = TARGET / "package-test"

timings = []


def record_timing(what, seconds):
    """Shown at the end of the run (conftest.py), pass or fail."""
    timings.append((what, seconds))


def need_tool(name, package):
    if not shutil.which(name):
        pytest.fail(f"{name} is missing: run scripts/bootstrap (Debian package {package})")
