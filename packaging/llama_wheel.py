"""Build and install llama-cpp-python for the GPU backend this machine has.

``make setup`` runs it before installing edged: ``detect`` prints the backend (``cuda``
when ``nvcc`` or a CUDA toolkit is found and an NVIDIA driver is loaded, ``metal`` on
Apple Silicon, else ``cpu``;
``EDGED_LLAMA_BACKEND=cpu|cuda|metal`` forces one), ``install`` builds the pinned
llama-cpp-python with that backend's ``CMAKE_ARGS`` into a wheel directory keyed by the
backend and its arguments, then installs from there, and ``plan`` prints what ``install``
would do.

pip's own wheel cache keys a built wheel by the source archive alone, not by
``CMAKE_ARGS``: it would hand a CPU build to a CUDA machine, or the reverse. So a GPU
build never reads or writes that cache (``--no-cache-dir``) and lives in its own
directory; only CPU builds use pip's cache (so the usual CPU rebuild takes seconds).

Standard library only: it runs before the virtual environment has anything in it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

BACKENDS = ("cpu", "cuda", "metal")
CMAKE_ARGS = {
    "cpu": "-DGGML_CUDA=OFF -DGGML_METAL=OFF",
    "cuda": "-DGGML_CUDA=ON",
    "metal": "-DGGML_METAL=ON",
}
PACKAGE = "llama-cpp-python"
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
ROOT = Path(__file__).resolve().parent.parent


def detect(forced: str, environ: dict[str, str], system: str,
           driver: Path = NVIDIA_DRIVER) -> str:
    """The backend to build: ``forced`` unless it is ``auto``; else what the machine has
    (``system`` is ``platform.system()-platform.machine()``, e.g. ``Darwin-arm64``).

    A CUDA toolkit alone is not enough: a build machine without a GPU (this project's CI
    among them) may have ``nvcc``, and a CUDA build there takes far longer to compile and
    cannot even load without the driver's ``libcuda``. ``driver`` is the file the loaded
    NVIDIA kernel driver shows."""
    if forced != "auto":
        if forced not in BACKENDS:
            raise SystemExit(f"EDGED_LLAMA_BACKEND must be auto or one of {', '.join(BACKENDS)}"
                             f", not {forced!r}")
        return forced
    if cuda_compiler(environ) is not None and driver.exists():
        return "cuda"
    if system == "Darwin-arm64":
        return "metal"  # llama.cpp's default on Apple Silicon
    return "cpu"


def cuda_compiler(environ: dict[str, str]) -> str | None:
    """``nvcc`` on PATH, or in the toolkit ``CUDA_HOME``/``CUDA_PATH`` names, or in
    ``/usr/local/cuda``."""
    found = shutil.which("nvcc", path=environ.get("PATH", ""))
    if found:
        return found
    for home in (environ.get("CUDA_HOME"), environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def pinned_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The version the ``llama`` extra pins (``llama-cpp-python==X``)."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for requirement in extras["llama"]:
        name, _, version = requirement.partition("==")
        if name.strip() == PACKAGE and version:
            return version.strip()
    raise SystemExit(f"pyproject.toml's llama extra does not pin {PACKAGE}==VERSION")


@dataclass(frozen=True)
class WheelPlan:
    """Where the wheel for one backend lives, and the pip commands that make and install it."""

    backend: str
    wheel_dir: str
    build_env: dict[str, str]
    build: list[str]
    install: list[str]


def plan(backend: str, environ: dict[str, str], python: str) -> WheelPlan:
    """The wheel directory (keyed by version, backend and CMake arguments) and commands."""
    version = pinned_version()
    cmake_args = CMAKE_ARGS[backend]
    key = hashlib.sha256(f"{version} {cmake_args}".encode()).hexdigest()[:12]
    cache = Path(environ.get("XDG_CACHE_HOME") or Path(environ.get("HOME", "~")) / ".cache")
    wheel_dir = cache.expanduser() / "edged" / "wheels" / f"{PACKAGE}-{version}-{backend}-{key}"
    no_cache = [] if backend == "cpu" else ["--no-cache-dir"]
    build_env = {"CMAKE_ARGS": cmake_args}
    compiler = cuda_compiler(environ) if backend == "cuda" else None
    if compiler and not shutil.which("nvcc", path=environ.get("PATH", "")):
        build_env["CUDACXX"] = compiler  # a toolkit off PATH: tell CMake where nvcc is
    requirement = f"{PACKAGE}=={version}"
    return WheelPlan(
        backend=backend, wheel_dir=str(wheel_dir), build_env=build_env,
        build=[python, "-m", "pip", "wheel", "--quiet", "--no-deps", *no_cache,
               "--wheel-dir", str(wheel_dir), requirement],
        # --force-reinstall: a venv that held another backend's build gets this one.
        install=[python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                 "--force-reinstall", "--find-links", str(wheel_dir), requirement])


def install(steps: WheelPlan, environ: dict[str, str]) -> None:
    """Build the wheel unless its directory has it already, then install it."""
    if not any(Path(steps.wheel_dir).glob("llama_cpp_python-*.whl")):
        print(f"building {PACKAGE} for {steps.backend} (the first time takes minutes)",
              file=sys.stderr)
        subprocess.run(steps.build, env={**environ, **steps.build_env}, check=True)
    subprocess.run(steps.install, env=environ, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("detect", "plan", "install"))
    parser.add_argument("--backend", default=os.environ.get("EDGED_LLAMA_BACKEND", "auto"))
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--system", default=f"{platform.system()}-{platform.machine()}")
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    backend = detect(args.backend, environ, args.system)
    if args.command == "detect":
        print(backend)
        return
    steps = plan(backend, environ, args.python)
    if args.command == "plan":
        print(json.dumps(asdict(steps), indent=2))
    else:
        install(steps, environ)


if __name__ == "__main__":
    main()
