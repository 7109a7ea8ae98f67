"""``pipx install .`` (the README's Install note) gives a working ``edged``.

pipx makes a virtual environment and pip-installs the checkout into it. This test does
the same in two steps, offline: it builds the wheel from a copy of the checkout with the
project's own build backend (the one ``make setup`` installed: pyproject's
``build-system``), installs that wheel into a fresh venv, and lets the venv see the
dependencies the project's venv already holds (a ``.pth`` line), so nothing is
downloaded and llama-cpp-python is not rebuilt. It then checks that those dependencies
satisfy what the wheel declares, and runs the installed ``edged``: ``--help``, and
``serve`` answering ``config show``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from edged.devtools.daemon import clean_environment, free_port

ROOT = Path(__file__).resolve().parents[2]
# What a checkout holds but a wheel never needs (and the build must not write into).
NOT_COPIED = {".git", ".venv", "node_modules", "build", "tests", "bench", ".ci"}
CHECK_REQUIREMENTS = """
import importlib.metadata as md, json, sys
from packaging.requirements import Requirement
missing = []
for line in md.requires("edged") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra's requirement, or another platform's
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        version = None
    if version is None or not req.specifier.contains(version, prereleases=True):
        missing.append(f"{line} (have {version})")
import edged
print(json.dumps({"missing": missing, "edged": edged.__file__}))
"""


def copy_checkout(destination: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        top = NOT_COPIED if Path(folder) == ROOT else set()
        return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")
                or (n.startswith(".") and n.endswith("cache"))}

    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


@pytest.mark.timeout(180)
def test_installed_edged_runs_from_its_own_venv(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "checkout")
    dist = tmp_path / "dist"
    # The project's build backend, offline: no isolated build environment to download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--wheel-dir", str(dist), str(source)],
                   check=True, timeout=120, cwd=tmp_path)
    wheel = next(dist.glob("edged-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    str(wheel)], check=True, timeout=120, cwd=tmp_path)
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # After the venv's own site-packages: its edged comes first, the rest from ours.
    (Path(site) / "edged-test-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")

    env = clean_environment(EDGED_DATA_DIR=str(tmp_path / "data"))
    checked = json.loads(subprocess.run([str(python), "-c", CHECK_REQUIREMENTS], cwd=tmp_path,
                                        capture_output=True, text=True, check=True,
                                        env=env).stdout)
    assert checked["missing"] == []
    assert Path(checked["edged"]).is_relative_to(venv)  # the wheel's copy, not the checkout

    edged = venv / "bin" / "edged"
    shown = subprocess.run([str(edged), "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60, env=env)
    assert shown.returncode == 0, shown.stderr
    assert {"serve", "run", "receipts", "config"} <= {
        line.split()[0] for line in shown.stdout.split("Commands:")[1].splitlines()
        if line.strip()}

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        serve = subprocess.Popen([str(edged), "serve", "--no-demo-model", "--port", str(port)],
                                 cwd=tmp_path, env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the installed edged did not become ready"
            time.sleep(0.1)
        config = subprocess.run([str(edged), "config", "show"], cwd=tmp_path, timeout=60,
                                capture_output=True, text=True, env={**env,
                                                                     "EDGED_PORT": str(port)})
        assert config.returncode == 0, config.stderr
        settings = json.loads(config.stdout)
        assert settings["port"] == port and settings["data_dir"] == str(tmp_path / "data")
    finally:
        serve.terminate()
        serve.wait(timeout=30)
