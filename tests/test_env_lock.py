"""The pinned environment: requirements.lock matches pyproject.toml, and the venv running the tests matches the lock."""

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def locked_versions() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", LOCK.read_text(), flags=re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_every_locked_package_carries_hashes_and_torch_is_left_to_the_makefile():
    text = LOCK.read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    pinned = [b for b in blocks if "==" in b.split("\n")[0]]
    assert len(pinned) > 150
    assert all("--hash=sha256:" in b for b in pinned)
    assert "torch" not in locked_versions()
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()


def test_the_venv_running_the_tests_is_the_locked_one():
    """A drifted venv (a package upgraded by hand, an old venv from before the lock) fails here, by name."""
    drift = {}
    for name, version in locked_versions().items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            drift[name] = (version, "missing")
            continue
        if have != version:
            drift[name] = (version, have)
    assert not drift, f"installed packages differ from requirements.lock (locked, installed): {drift}; run `make install`"
    assert metadata.version("torch").split("+")[0] == "2.13.0"


def test_a_lock_out_of_date_with_pyproject_is_refused_with_the_fix(tmp_path):
    for rel in ("pyproject.toml", "requirements.lock", "scripts/env/check_lock.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    check = [str(tmp_path / "scripts/env/check_lock.sh")]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"tqdm>=4.66",', '"tqdm>=4.66",\n    "rich>=13",'))
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 1
    assert "requirements.lock is out of date with pyproject.toml" in out.stderr and "make lock" in out.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_stops_before_installing_from_a_stale_lock(tmp_path):
    """`make test` on a checkout whose pyproject.toml changed says so instead of installing the old lock."""
    for rel in ("Makefile", "pyproject.toml", "requirements.lock", "scripts/env/check_lock.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / ".venv/bin/python").symlink_to("/bin/false")  # any install attempt would fail differently
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# edited\n")
    out = subprocess.run(["make", "-C", str(tmp_path), "install"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "out of date" in out.stderr and "make lock" in out.stderr
