"""packaging/llama_wheel.py: which llama.cpp backend ``make setup`` builds, and where its
wheel is kept, so that a CPU build never reaches a GPU machine or the reverse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "llama_wheel.py"


def run(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, env=environ, timeout=60)


@pytest.fixture
def machine(tmp_path: Path) -> dict[str, str]:
    """A PATH with nothing but what each test puts there, and a private cache folder."""
    (tmp_path / "bin").mkdir()
    return {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path),
            "XDG_CACHE_HOME": str(tmp_path / "cache")}


def put_nvcc(machine: dict[str, str]) -> None:
    nvcc = Path(machine["PATH"]) / "nvcc"
    nvcc.write_text("#!/bin/sh\nexit 0\n")
    nvcc.chmod(0o755)


def plan(machine: dict[str, str], *args: str) -> dict[str, object]:
    done = run("plan", "--python", "python", *args, environ=machine)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_toolkit_with_a_driver_builds_cuda(machine: dict[str, str], tmp_path: Path) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import llama_wheel
    finally:
        sys.path.remove(str(SCRIPT.parent))
    put_nvcc(machine)
    driver = tmp_path / "nvidia-version"
    # nvcc alone (a build machine without a GPU, as CI is): the CPU.
    assert llama_wheel.detect("auto", machine, "Linux-x86_64", driver) == "cpu"
    driver.write_text("NVRM version: 550\n")
    assert llama_wheel.detect("auto", machine, "Linux-x86_64", driver) == "cuda"
    assert llama_wheel.detect("cpu", machine, "Linux-x86_64", driver) == "cpu"  # forced
    # A toolkit off PATH is found through CUDA_HOME.
    toolkit = {**machine, "PATH": "", "CUDA_HOME": str(Path(machine["PATH"]).parent)}
    assert llama_wheel.detect("auto", toolkit, "Linux-x86_64", driver) == "cuda"
    assert llama_wheel.plan("cuda", toolkit, "python").build_env["CUDACXX"].endswith("nvcc")


def test_apple_silicon_builds_metal_and_other_machines_the_cpu(
        machine: dict[str, str]) -> None:
    assert plan(machine, "--system", "Darwin-arm64")["backend"] == "metal"
    assert plan(machine, "--system", "Linux-x86_64")["backend"] == "cpu"
    assert plan(machine, "--system", "Linux-x86_64", "--backend", "cuda")["backend"] == "cuda"
    forced = run("detect", environ={**machine, "EDGED_LLAMA_BACKEND": "metal"})
    assert forced.stdout.strip() == "metal"


def test_each_backend_has_its_own_wheels_and_gpu_builds_skip_pips_cache(
        machine: dict[str, str]) -> None:
    plans = {backend: plan(machine, "--backend", backend) for backend in ("cpu", "cuda", "metal")}
    folders = {str(p["wheel_dir"]) for p in plans.values()}
    assert len(folders) == 3 and all(f.startswith(machine["XDG_CACHE_HOME"]) for f in folders)
    assert plans["cuda"]["build_env"]["CMAKE_ARGS"] == "-DGGML_CUDA=ON"  # type: ignore[index]
    assert "--no-cache-dir" in plans["cuda"]["build"]  # type: ignore[operator]
    assert "--no-cache-dir" in plans["metal"]["build"]  # type: ignore[operator]
    assert "--no-cache-dir" not in plans["cpu"]["build"]  # type: ignore[operator]
    for steps in plans.values():  # installs only that folder's wheel, over any other build
        install = steps["install"]
        assert isinstance(install, list)
        assert "--no-index" in install and "--force-reinstall" in install
        assert install[install.index("--find-links") + 1] == steps["wheel_dir"]
        assert install[-1].startswith("llama-cpp-python==")


def test_an_unknown_backend_is_refused(machine: dict[str, str]) -> None:
    refused = run("detect", "--backend", "gpu", environ=machine)
    assert refused.returncode != 0 and "cpu, cuda, metal" in refused.stderr
