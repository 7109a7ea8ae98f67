"""packaging/: the Containerfiles (linted by hadolint, install steps held to the
Makefile's), the compose file (checked against the Compose specification's schema, its
settings loaded as edged would load them), the systemd unit (``systemd-analyze verify``)
and the launchd agent (run as launchd would run it).

Images are not built here: that needs base images from a registry. What can be checked
without one is checked."""

from __future__ import annotations

import io
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from edged.devtools.daemon import clean_environment, free_port
from edged.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
CONTAINERFILES = {"cpu": PACKAGING / "Containerfile", "cuda": PACKAGING / "Containerfile.cuda"}
# What edged reads from its environment: one variable per setting, and EDGED_CONFIG.
SETTING_VARIABLES = {"EDGED_" + name.upper() for name in Settings.__dataclass_fields__} | {
    "EDGED_CONFIG"}


def venv_tool(name: str) -> str:
    """A console script of the test extra, beside this interpreter (or on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: install the test extra (pip install -e '.[test]')")
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) in order, comments left out, continuation lines joined."""
    with path.open("rb") as handle:
        parser = DockerfileParser(fileobj=io.BytesIO(handle.read()))
        return [(s["instruction"], " ".join(s["value"].split())) for s in parser.structure
                if s["instruction"] != "COMMENT"]


def image_env(path: Path) -> dict[str, str]:
    with path.open("rb") as handle:
        return dict(DockerfileParser(fileobj=io.BytesIO(handle.read())).envs)


def extras(command: str) -> set[str]:
    """The extras of the ``.[a,b]`` requirement a ``pip install`` command installs."""
    match = re.search(r"\.\[([a-z0-9_,-]+)\]", command)
    assert match, command
    return set(match.group(1).split(","))


def makefile_setup() -> tuple[str, str]:
    """The Makefile's two install commands: llama_wheel.py install, then pip install."""
    recipe = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    wheel = next(line for line in recipe.splitlines() if "packaging/llama_wheel.py install" in line)
    pip = next(line for line in recipe.splitlines()
               if "-m pip install" in line and ".[" in line and "bench" not in line)
    return " ".join(wheel.split()), " ".join(pip.split())


# --- Containerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", sorted(CONTAINERFILES))
def test_containerfile_passes_hadolint(backend: str) -> None:
    result = subprocess.run([venv_tool("hadolint"), "--no-color", str(CONTAINERFILES[backend])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_find_faults(tmp_path: Path) -> None:
    """The lint above can fail: the same tool rejects a careless file."""
    careless = tmp_path / "Containerfile"
    careless.write_text("FROM python\nRUN apt-get install cmake\nRUN cd /opt && make\n")
    result = subprocess.run([venv_tool("hadolint"), "--no-color", str(careless)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert {"DL3006", "DL3014", "DL3003"} <= set(re.findall(r"DL\d{4}", result.stdout))


@pytest.mark.parametrize("backend", sorted(CONTAINERFILES))
def test_containerfile_installs_as_the_makefile_does(backend: str) -> None:
    steps = instructions(CONTAINERFILES[backend])
    runs = [value for instruction, value in steps if instruction == "RUN"]
    make_wheel, make_pip = makefile_setup()

    # The same two steps, in the same order: llama-cpp-python through llama_wheel.py with
    # the backend forced, then the project with the Makefile's extras but the test one.
    assert "--backend $(LLAMA_BACKEND)" in make_wheel
    wheel = [i for i, command in enumerate(runs) if "packaging/llama_wheel.py install" in command]
    project = [i for i, command in enumerate(runs)
               if "-m pip install" in command and ".[" in command]
    assert len(wheel) == 1 and len(project) == 1 and wheel[0] < project[0]
    wheel_args = shlex.split(runs[wheel[0]].split("llama_wheel.py install", 1)[1])
    assert wheel_args[wheel_args.index("--backend") + 1] == backend
    # Built for the interpreter the project is then installed into.
    interpreter = wheel_args[wheel_args.index("--python") + 1]
    assert shlex.split(runs[project[0]])[0] == interpreter
    assert extras(runs[project[0]]) == extras(make_pip) - {"test"}
    assert {"llama", "demo"} <= extras(runs[project[0]])

    # What llama-cpp-python's source build needs, installed before it.
    apt = next(i for i, command in enumerate(runs) if "apt-get install" in command)
    assert apt < wheel[0] and {"build-essential", "cmake"} <= set(runs[apt].split())

    # Everything the build reads is copied in before it is read: llama_wheel.py and the
    # pyproject it takes the pin from before the wheel step; the readme and every
    # package pyproject's find section includes before the project's install.
    copied: list[tuple[int, str]] = []
    run_index = -1
    for instruction, value in steps:
        if instruction == "RUN":
            run_index += 1
        if instruction == "COPY":
            copied += [(run_index, source) for source in value.split()[:-1]]
    before = {source for index, source in copied if index < wheel[0]}
    assert {"packaging/llama_wheel.py", "pyproject.toml"} <= before
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in found}
    before_project = {source for index, source in copied if index < project[0]}
    assert packages | {pyproject["project"]["readme"]} <= before_project
    assert all((ROOT / source).exists() for _, source in copied)

    base = next(value for instruction, value in steps if instruction == "FROM")
    assert base == "python:3.11-slim" if backend == "cpu" else \
        re.fullmatch(r"nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", base)
    user = [value for instruction, value in steps if instruction == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["edged"]') in steps and ("CMD", '["serve"]') in steps


@pytest.mark.parametrize("backend", sorted(CONTAINERFILES))
def test_containerfile_settings_refuse_to_serve_without_keys(backend: str) -> None:
    """The image listens beyond loopback (it must, in a container), so edged refuses to
    start until EDGED_API_KEYS is given; with a key its settings load."""
    env = {k: v for k, v in image_env(CONTAINERFILES[backend]).items() if k.startswith("EDGED_")}
    assert set(env) <= SETTING_VARIABLES
    with pytest.raises(SettingsError) as refused:
        load_settings(environ=env, config_file=None, flags={})
    assert refused.value.param == "host"
    settings = load_settings(environ={**env, "EDGED_API_KEYS": "k1"}, config_file=None, flags={})
    assert settings.host == "0.0.0.0" and str(settings.data_dir) == "/var/lib/edged"


# --- compose ---------------------------------------------------------------------------------

COMPOSE = PACKAGING / "compose.yaml"


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    checker = venv_tool("check-jsonschema")
    ok = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # ... and the schema does reject a misspelt key.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    environment:\n", "    enviroment:\n", 1))
    bad = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(broken)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "enviroment" in bad.stdout + bad.stderr


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        if op == ":?":
            raise LookupError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def service_settings(service: dict[str, Any], variables: dict[str, str]) -> Settings:
    """The settings edged loads in that service's container: the image's ENV, then the
    service's environment."""
    dockerfile = ROOT / "packaging" / Path(service["build"]["dockerfile"]).name
    env = {k: v for k, v in image_env(dockerfile).items() if k.startswith("EDGED_")}
    env.update({k: interpolate(v, variables) for k, v in service["environment"].items()})
    assert set(env) <= SETTING_VARIABLES, set(env) - SETTING_VARIABLES
    return load_settings(environ=env, config_file=None, flags={})


def test_compose_runs_two_nodes_a_fleet_and_postgresql() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"node-a", "node-b", "fleet", "postgres"}
    for name in ("node-a", "node-b", "fleet"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == \
            CONTAINERFILES["cpu"]
        assert any(v.endswith(":/var/lib/edged") for v in services[name]["volumes"])

    # Without the API key the file refuses to start (compose's ${VAR:?}), ...
    with pytest.raises(LookupError):
        service_settings(services["node-a"], {})
    variables = {"EDGED_API_KEY": "secret-key"}
    nodes = {name: service_settings(services[name], variables) for name in ("node-a", "node-b")}
    fleet = service_settings(services["fleet"], variables)

    # ... with it, every edged service's settings load (non-loopback with keys).
    for name, settings in {**nodes, "fleet": fleet}.items():
        assert settings.host == "0.0.0.0" and settings.api_keys == ("secret-key",), name
        assert name in settings.allowed_hosts
    assert services["fleet"]["command"] == ["fleet", "serve"]
    assert services["node-a"]["command"] == services["node-b"]["command"] == ["serve"]

    # The nodes sync with each other and push to the fleet, at the ports they listen on.
    assert nodes["node-a"].peers == (f"http://node-b:{nodes['node-b'].port}",)
    assert nodes["node-b"].peers == (f"http://node-a:{nodes['node-a'].port}",)
    for settings in nodes.values():
        assert settings.fleet_url == f"http://fleet:{fleet.fleet_port}"
    published = {name: services[name]["ports"][0].rsplit(":", 1)[1] for name in services
                 if "ports" in services[name]}
    assert published == {"node-a": str(nodes["node-a"].port),
                         "node-b": str(nodes["node-b"].port), "fleet": str(fleet.fleet_port)}
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))

    # The fleet stores into the postgres service, with the user and database it creates.
    database = urlsplit(fleet.fleet_database)
    postgres = {key: interpolate(value, variables)
                for key, value in services["postgres"]["environment"].items()}
    assert database.scheme == "postgresql" and database.hostname == "postgres"
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert services["fleet"]["depends_on"]["postgres"]["condition"] == "service_healthy"


# --- systemd ---------------------------------------------------------------------------------

UNIT = PACKAGING / "edged.service"


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, raw
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_valid_and_hardened(tmp_path: Path) -> None:
    unit = unit_sections(UNIT.read_text())
    service = unit["Service"]
    assert set(unit) == {"Unit", "Service", "Install"}
    assert service["ExecStart"] == ["/opt/edged/.venv/bin/edged serve"]  # INSTALL.md's place
    assert service["User"] == ["edged"] and service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"] and service["UMask"] == ["0077"]
    env = dict(item.split("=", 1) for item in service["Environment"])
    assert set(env) <= SETTING_VARIABLES
    # ProtectSystem=strict: the data directory is the one writable place, and systemd
    # creates it (StateDirectory= is relative to /var/lib).
    assert service["ReadWritePaths"] == [env["EDGED_DATA_DIR"]]
    assert env["EDGED_DATA_DIR"] == "/var/lib/" + service["StateDirectory"][0]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # macOS and other hosts without systemd: the checks above stand
        return
    # A root with the unit installed where INSTALL.md puts it, the system's own units
    # (targets it refers to) and an edged at ExecStart's path, so that nothing is missing.
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/edged.service")
    edged = root / "opt/edged/.venv/bin/edged"
    edged.parent.mkdir(parents=True)
    shutil.copy(Path(sys.executable).parent / "edged", edged)
    result = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", "edged.service"],
                            capture_output=True, text=True, timeout=120)
    # verify exits 0 on warnings too (an unknown key is "ignored"): any output is a fault.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


# --- launchd ---------------------------------------------------------------------------------


def test_launchd_agent_starts_edged_as_launchd_would(tmp_path: Path) -> None:
    agent = plistlib.loads((PACKAGING / "dev.edged.plist").read_bytes())
    assert agent["Label"] == "dev.edged" and agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # restart on failure only
    arguments = agent["ProgramArguments"]

    # launchd runs the arguments with HOME set and little else; edged is where pipx puts it.
    home = tmp_path / "home"
    (home / ".local/bin").mkdir(parents=True)
    (home / "Library/Logs").mkdir(parents=True)
    (home / ".local/bin/edged").symlink_to(Path(sys.executable).parent / "edged")
    port = free_port()
    env = {k: v for k, v in clean_environment().items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), EDGED_PORT=str(port), EDGED_INSTALL_DEMO_MODEL="false",
               **agent.get("EnvironmentVariables", {}))
    process = subprocess.Popen(arguments, env=env, cwd="/")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (home / "Library/Logs/edged.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "edged did not become ready"
            time.sleep(0.1)
    finally:
        process.terminate()  # `exec`: the process launchd holds is edged itself
        assert process.wait(timeout=30) == 0  # a clean stop: KeepAlive leaves it stopped
    assert f"listening on http://127.0.0.1:{port}" in \
        (home / "Library/Logs/edged.log").read_text()
    assert (home / ".local/share/edged/ledger.sqlite3").exists()
    assert os.stat(home / ".local/share/edged/keys").st_mode & 0o777 == 0o700
