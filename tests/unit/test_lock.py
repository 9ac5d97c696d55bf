"""The lock file is what every install path uses: it must agree with pyproject.toml's ranges."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; on 3.10 the Makefile's lock-check still runs

ROOT = Path(__file__).resolve().parents[2]


def _locked() -> dict[str, set[str]]:
    """Package name -> locked versions (a universal lock may hold two, one per Python range)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    out: dict[str, set[str]] = {}
    for p in lock["package"]:
        if "version" in p:
            out.setdefault(p["name"], set()).add(p["version"])
    return out


def test_lock_matches_pyproject() -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed in this environment (the Makefile installs it)")
    res = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"uv.lock disagrees with pyproject.toml (run `make lock`):\n{res.stderr}"


def test_every_extra_is_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    wanted = [*project["dependencies"], *(d for deps in project["optional-dependencies"].values() for d in deps)]
    for spec in wanted:
        name = spec.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        assert name.lower().replace("_", "-") in locked, f"{name} is in pyproject.toml but not in uv.lock"


def test_installed_versions_are_the_locked_ones() -> None:
    """The venv running the suite was built from the lock (`make test`), not from open ranges."""
    from importlib.metadata import PackageNotFoundError, version

    locked = _locked()
    for name in ("scrapy", "redis", "boto3", "playwright", "structlog", "twisted", "pytest", "mypy"):
        try:
            have = version(name)
        except PackageNotFoundError:
            continue
        assert have in locked[name], f"{name} {have} is installed, uv.lock pins {sorted(locked[name])}"
