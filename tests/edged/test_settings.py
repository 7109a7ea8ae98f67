from __future__ import annotations

from pathlib import Path

import pytest

from edged.settings import DEFAULT_PORT, SettingsError, gpu_layers_option, load_settings


def test_defaults_bind_loopback_on_the_documented_port(tmp_path: Path) -> None:
    settings = load_settings(environ={"HOME": str(tmp_path)})
    assert settings.host == "127.0.0.1"
    assert settings.port == DEFAULT_PORT not in (8080, 11434)
    assert settings.data_dir == tmp_path / ".local/share/edged"


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    config = tmp_path / "edged.toml"
    config.write_text('port = 4001\nkeep_alive = 10\nmax_queue = 3\n')
    environ = {"HOME": str(tmp_path), "EDGED_PORT": "4002", "EDGED_KEEP_ALIVE": "20"}
    settings = load_settings(environ=environ, config_file=config, flags={"port": 4003})
    assert settings.max_queue == 3  # file beats default
    assert settings.keep_alive == 20.0  # environment beats file
    assert settings.port == 4003  # flag beats environment


def test_gpu_layers_is_auto_a_count_or_all(tmp_path: Path) -> None:
    assert load_settings(environ={"HOME": str(tmp_path)}).gpu_layers == "auto"
    config = tmp_path / "edged.toml"
    config.write_text("gpu_layers = 12\n")  # a TOML integer is a count too
    assert gpu_layers_option(load_settings(environ={}, config_file=config).gpu_layers) == 12
    settings = load_settings(environ={"HOME": str(tmp_path), "EDGED_GPU_LAYERS": "-1"})
    assert gpu_layers_option(settings.gpu_layers) == -1


def test_config_file_found_in_data_dir(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('cors_origins = ["http://app.local"]\n')
    settings = load_settings(environ={"EDGED_DATA_DIR": str(tmp_path)})
    assert settings.cors_origins == ("http://app.local",)


def test_environment_lists_are_comma_separated(tmp_path: Path) -> None:
    settings = load_settings(environ={"HOME": str(tmp_path),
                                      "EDGED_ALLOWED_HOSTS": "a.lan, b.lan"})
    assert settings.allowed_hosts == ("a.lan", "b.lan")


@pytest.mark.parametrize(("environ", "param"), [
    ({"EDGED_HOST": "0.0.0.0"}, "host"),
    ({"EDGED_PORT": "70000"}, "port"),
    ({"EDGED_PORT": "eighty"}, "port"),
    ({"EDGED_CORS_ORIGINS": "*"}, "cors_origins"),
    ({"EDGED_OPERATOR_SHARE_PPM": "2000000"}, "operator_share_ppm"),
    ({"EDGED_CHAIN_MAX_FEE_GWEI": "0"}, "chain_max_fee_gwei"),
    ({"EDGED_CHAIN_MAX_FEE_GWEI": "-1"}, "chain_max_fee_gwei"),
    ({"EDGED_CHAIN_MAX_FEE_GWEI": "nan"}, "chain_max_fee_gwei"),
    ({"EDGED_GPU_LAYERS": "all"}, "gpu_layers"),
    ({"EDGED_GPU_LAYERS": "-2"}, "gpu_layers"),
])
def test_invalid_settings_are_refused(tmp_path: Path, environ: dict[str, str],
                                      param: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"HOME": str(tmp_path), **environ})
    assert caught.value.param == param


def test_non_loopback_bind_is_allowed_with_api_keys(tmp_path: Path) -> None:
    settings = load_settings(environ={"HOME": str(tmp_path), "EDGED_HOST": "0.0.0.0",
                                      "EDGED_API_KEYS": "secret-one"})
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize("keys", [" ", ",", "\u00a0", "good, \u00a0"])
def test_blank_or_whitespace_api_keys_are_refused_from_the_environment(
        tmp_path: Path, keys: str) -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(SettingsError) as caught:
            load_settings(environ={"HOME": str(tmp_path), "EDGED_HOST": host,
                                   "EDGED_API_KEYS": keys})
        assert caught.value.param == "api_keys"


@pytest.mark.parametrize("keys", [("",), (" ",), ("\u00a0",), ("ok", "has space"), ("tab\t",),
                                  ("caf\u00e9",)])
def test_blank_or_whitespace_api_keys_are_refused_from_flags(
        tmp_path: Path, keys: tuple[str, ...]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"HOME": str(tmp_path)},
                      flags={"host": "0.0.0.0", "api_keys": keys})
    assert caught.value.param == "api_keys"


@pytest.mark.parametrize("line", ['api_keys = [""]', 'api_keys = [" "]', "api_keys = []",
                                  'api_keys = ["\u00a0"]'])
def test_blank_api_keys_are_refused_from_the_config_file(tmp_path: Path, line: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'host = "0.0.0.0"\n{line}\n', encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"HOME": str(tmp_path)}, config_file=config)
    assert caught.value.param == "api_keys"


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(SettingsError):
        load_settings(environ={"HOME": str(tmp_path)}, config_file=config)


def test_redacted_hides_secrets(tmp_path: Path) -> None:
    settings = load_settings(environ={"HOME": str(tmp_path), "EDGED_API_KEYS": "hunter2"})
    shown = settings.redacted()
    assert "hunter2" not in repr(shown)
    assert shown["api_keys"] == ["<redacted>"]
    assert shown["port"] == DEFAULT_PORT
