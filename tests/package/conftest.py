"""Fixtures of the package tests: the packages scripts/package built, and a timings report.

The packages come from `scripts/package --debug` (or `scripts/package` with
CONFAB_PACKAGE_PROFILE=release); these tests never build anything.
"""

import subprocess

import pytest

from support import BUNDLE, need_tool, timings


def pytest_terminal_summary(terminalreporter):
    if timings:
        terminalreporter.section("package timings")
        for what, seconds in timings:
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")


def one_file(pattern):
    found = sorted(BUNDLE.glob(pattern))
    if len(found) != 1:
        pytest.fail(f"expected one {BUNDLE / pattern}, found {len(found)}: run scripts/package --debug "
                    "(after cargo build --workspace --all-targets --locked)")
    return found[0]


@pytest.fixture(scope="session")
def deb():
    return one_file("deb/confab_*.deb")


@pytest.fixture(scope="session")
def rpm():
    return one_file("rpm/confab-*.rpm")


@pytest.fixture(scope="session")
def deb_tree(deb, tmp_path_factory):
    """The .deb's files, unpacked."""
    need_tool("dpkg-deb", "dpkg")
    out = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out
