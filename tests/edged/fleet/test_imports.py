"""The fleet manager shares a small core with the node, never the node's inference stack.

Each check imports a module in a fresh interpreter and lists what got loaded; the node's
own app is checked the same way, so the listing is known to show the stack when it is there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# The node's inference stack: services, model runtimes and their native libraries.
INFERENCE_STACK = ("edged.scheduler", "edged.inference", "edged.predict", "edged.datanets",
                   "edged.bindings", "edged.federation")
NATIVE_PACKAGES = ("runtimes", "llama_cpp", "onnxruntime")


def modules_loaded_by(module: str) -> set[str]:
    """Every module in ``sys.modules`` after a fresh interpreter imports ``module``."""
    script = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    listing = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True,
                             capture_output=True, text=True, timeout=60).stdout
    return set(listing.split())


def inference_modules(loaded: set[str]) -> set[str]:
    return {name for name in loaded
            if name in INFERENCE_STACK or name.split(".")[0] in NATIVE_PACKAGES}


def test_the_fleet_app_loads_none_of_the_inference_stack() -> None:
    loaded = modules_loaded_by("edged.fleet.app")
    assert "edged.fleet.app" in loaded
    assert inference_modules(loaded) == set()


def test_the_node_app_does_load_it_so_the_listing_can_show_it() -> None:
    loaded = modules_loaded_by("edged.app")
    assert {"edged.scheduler", "edged.inference", "runtimes"} <= inference_modules(loaded)
