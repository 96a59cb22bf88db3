from __future__ import annotations

from pathlib import Path

import pytest

from entryguard.agent.config import ConfigError, load_config

GOOD = """\
server:
  url: "http://127.0.0.1:8080/api/v1"
  api_key: "eg_abcdefgh_secret"
agent:
  name: "prod-agent"
tunnel:
  enabled: true
  edge_url: "ws://127.0.0.1:8081"
  allowed_targets: ["10.0.1.0/24"]
scripts:
  enabled: true
  allowed_dirs: ["/etc/eg-agent/scripts"]
  timeout: 30s
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yml"
    p.write_text(text)
    return p


def test_the_documented_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.modes == ["tunnel", "scripts"]
    assert cfg.scripts.timeout_seconds == 30
    assert [str(n) for n in cfg.tunnel.target_networks() or []] == ["10.0.1.0/24"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (("edge_url:", "edge_ulr:"), "unknown key 'tunnel.edge_ulr'"),
        (("allowed_dirs:", "allowed_dir:"), "unknown key 'scripts.allowed_dir'"),
        (('"ws://127.0.0.1:8081"', '"https://edge"'), "must be ws:// or wss://"),
        (('"10.0.1.0/24"', '"10.0.1.5/24"'), "host bits"),
        (("timeout: 30s", "timeout: forever"), "scripts.timeout"),
        (('api_key: "eg_abcdefgh_secret"', 'api_key: "hunter2"'), "server.api_key"),
        (('  name: "prod-agent"\n', ""), "'agent' is empty"),
        (('agent:\n  name: "prod-agent"\n', ""), "missing key 'agent'"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, change: tuple[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        load_config(write(tmp_path, GOOD.replace(*change)))


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eg-agent init"):
        load_config(tmp_path / "nope.yml")


def test_a_config_with_no_mode_loads(tmp_path: Path) -> None:
    # What `eg-agent init` writes with no mode flag: valid, and `run`/`check` say what to add.
    base = GOOD.split("tunnel:")[0]
    assert load_config(write(tmp_path, base)).modes == []
    off = base + "tunnel:\n  enabled: false\nscripts:\n  enabled: false\n"
    assert load_config(write(tmp_path, off)).modes == []


def test_a_tunnel_section_appended_to_init_s_file_is_tunnel_mode(tmp_path: Path) -> None:
    base = GOOD.split("tunnel:")[0]
    cfg = load_config(write(tmp_path, base + 'tunnel:\n  enabled: true\n  edge_url: "ws://e:1"\n'))
    assert cfg.modes == ["tunnel"] and cfg.tunnel.edge_url == "ws://e:1"
    with pytest.raises(ConfigError, match=r"tunnel\.edge_url is missing"):
        load_config(write(tmp_path, base + "tunnel:\n  enabled: true\n"))
