"""
Reading whole files: frp's ``{{ .Envs.NAME }}`` templates, a client file's
``includes``, and ``gotaxy verify`` (every error of a file, exit 0 or 1).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from gotaxy import cli
from gotaxy.config import ConfigError, load_client_file, load_server_file
from gotaxy.config.templates import TemplateError, render
from gotaxy.config.verify import verify_file

FRP_CONF = Path(__file__).resolve().parents[2] / "shared" / "frp-conf"
if not FRP_CONF.is_dir():  # a worktree: /work/wt/<name>/tests -> /work/shared
    FRP_CONF = Path(__file__).resolve().parents[3] / "shared" / "frp-conf"


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_verify(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["verify", *args], out=out)
    return code, out.getvalue()


class TestTemplates:
    def test_env_values_are_put_in_as_written(self) -> None:
        text = 'serverAddr = "{{ .Envs.FRP_SERVER_ADDR }}"\nserverPort = {{.Envs.FRP_PORT}}\n'
        rendered = render(text, {"FRP_SERVER_ADDR": "203.0.113.5", "FRP_PORT": "7001"})
        assert rendered.text == 'serverAddr = "203.0.113.5"\nserverPort = 7001\n'
        assert rendered.unset == ()

    def test_trim_markers_eat_the_white_space(self) -> None:
        assert render("a = \"x  {{- .Envs.V -}}  y\"", {"V": "1"}).text == 'a = "x1y"'

    def test_an_unset_variable_is_empty_and_warned_about(self, tmp_path: Path) -> None:
        path = write(tmp_path / "client.toml", 'serverAddr = "example.org"\nuser = "{{ .Envs.GTX_TEST_USER }}x"\n'
                     '[[proxies]]\nname = "ssh"\nlocalPort = 22\n')
        loaded = load_client_file(path, env={})
        assert loaded.config.user == "x"
        assert any("GTX_TEST_USER is not set" in w for w in loaded.warnings)

    def test_a_templated_frp_file_starts_unchanged(self, tmp_path: Path) -> None:
        text = (FRP_CONF / "frpc.toml").read_text().replace('"127.0.0.1"', '"{{ .Envs.FRP_SERVER_ADDR }}"', 1)
        assert "{{ .Envs.FRP_SERVER_ADDR }}" in text
        path = write(tmp_path / "frpc.toml", text)
        config = load_client_file(path, env={"FRP_SERVER_ADDR": "198.51.100.7"}).config
        assert config.server_addr == "198.51.100.7"

    def test_other_template_actions_are_refused_with_their_line(self, tmp_path: Path) -> None:
        with pytest.raises(TemplateError, match="line 2: the template {{ if .Envs.X }}"):
            render('a = 1\n{{ if .Envs.X }}b = 2{{ end }}\n', {})
        path = write(tmp_path / "server.toml", 'bindPort = {{ parseNumberRange "1-2" }}\n')
        with pytest.raises(ConfigError, match=r"server.toml: line 1: .*only \{\{ .Envs.NAME \}\}"):
            load_server_file(path, env={})

    def test_server_files_are_rendered_too(self, tmp_path: Path) -> None:
        path = write(tmp_path / "server.toml", "bindPort = {{ .Envs.PORT }}\n")
        assert load_server_file(path, env={"PORT": "7443"}).config.bind_port == 7443


class TestIncludes:
    def client(self, tmp_path: Path, includes: str = '["./confd/*.toml"]') -> str:
        return write(
            tmp_path / "frpc.toml",
            f'serverAddr = "127.0.0.1"\nincludes = {includes}\n'
            '[[proxies]]\nname = "main"\nlocalPort = 22\n',
        )

    def test_proxies_of_included_files_are_loaded_and_a_reread_sees_changes(self, tmp_path: Path) -> None:
        path = self.client(tmp_path)
        write(tmp_path / "confd" / "b.toml", '[[proxies]]\nname = "web"\nlocalPort = 8080\n')
        write(tmp_path / "confd" / "a.toml", '[[proxies]]\nname = "db"\nlocalPort = 5432\nremotePort = 6432\n')
        write(tmp_path / "confd" / "notes.txt", "not a proxy file")
        config = load_client_file(path, env={}).config
        assert [t.name for t in config.tunnels] == ["main", "db", "web"]
        assert [Path(p).name for p in config.included] == ["a.toml", "b.toml"]

        (tmp_path / "confd" / "a.toml").unlink()
        write(tmp_path / "confd" / "c.toml", '[[proxies]]\nname = "dns"\nlocalPort = 53\n')
        config = load_client_file(path, env={}).config
        assert [t.name for t in config.tunnels] == ["main", "web", "dns"]

    def test_patterns_are_relative_to_the_including_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = self.client(tmp_path / "etc")
        write(tmp_path / "etc" / "confd" / "x.toml", '[[proxies]]\nname = "x"\nlocalPort = 80\n')
        monkeypatch.chdir(tmp_path)
        assert [t.name for t in load_client_file(path, env={}).config.tunnels] == ["main", "x"]

    def test_a_pattern_that_matches_nothing_is_a_warning(self, tmp_path: Path) -> None:
        loaded = load_client_file(self.client(tmp_path), env={})
        assert [t.name for t in loaded.config.tunnels] == ["main"]
        assert any("'includes' pattern \"./confd/*.toml\" matches no file" in w for w in loaded.warnings)

    def test_a_name_defined_twice_names_both_files(self, tmp_path: Path) -> None:
        path = self.client(tmp_path)
        other = write(tmp_path / "confd" / "dup.toml", '[[proxies]]\nname = "main"\nlocalPort = 23\n')
        with pytest.raises(ConfigError) as caught:
            load_client_file(path, env={})
        assert str(caught.value) == (
            f"{other}: proxy 'main' is also defined in {path}; give each proxy its own name"
        )

    def test_an_included_file_holds_proxies_only(self, tmp_path: Path) -> None:
        path = self.client(tmp_path)
        write(tmp_path / "confd" / "bad.toml", 'serverPort = 7001\n[[proxies]]\nname = "x"\nlocalPort = 1\n')
        with pytest.raises(ConfigError, match="holds only \\[\\[proxies\\]\\] entries, not 'serverPort'; move"):
            load_client_file(path, env={})

    def test_included_files_are_rendered_and_checked_like_the_main_one(self, tmp_path: Path) -> None:
        path = self.client(tmp_path)
        write(tmp_path / "confd" / "t.toml", '[[proxies]]\nname = "t"\nlocalPort = {{ .Envs.T_PORT }}\n')
        assert load_client_file(path, env={"T_PORT": "9000"}).config.tunnels[-1].local_port == 9000
        write(tmp_path / "confd" / "u.toml", '[[proxies]]\nname = "u"\nlocalPrt = 1\n')
        with pytest.raises(ConfigError, match="u.toml: unknown key 'localPrt' in proxy 'u'; did you mean 'localPort'"):
            load_client_file(path, env={"T_PORT": "9000"})

    def test_includes_must_be_a_list_of_patterns(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="'includes' must be a list of file patterns"):
            load_client_file(self.client(tmp_path, '"./confd/*.toml"'), env={})


class TestVerify:
    @pytest.mark.parametrize("name,kind", [
        ("frps.toml", "server"), ("frpc.toml", "client"),
        ("frps_full_example.toml", "server"), ("frpc_full_example.toml", "client"),
    ])
    def test_frps_and_frpc_examples_are_valid(self, tmp_path: Path, name: str, kind: str) -> None:
        path = shutil.copy(FRP_CONF / name, tmp_path / name)
        code, out = run_verify(str(path))
        assert code == 0, out
        assert out.splitlines()[-1].startswith(f"{path}: a valid {kind} file")

    def test_the_full_examples_warnings_are_printed(self, tmp_path: Path) -> None:
        path = shutil.copy(FRP_CONF / "frpc_full_example.toml", tmp_path / "frpc.toml")
        code, out = run_verify(str(path))
        assert code == 0
        assert "warning: " in out and "'clientID' is an frp setting" in out

    def test_frps_legacy_ini_says_how_to_convert(self, tmp_path: Path) -> None:
        path = shutil.copy(FRP_CONF / "frps_legacy_full.ini", tmp_path / "frps.ini")
        code, out = run_verify(str(path))
        assert code == 1
        assert f"gotaxy convert {path}" in out

    def test_every_error_is_printed_not_only_the_first(self, tmp_path: Path) -> None:
        path = write(tmp_path / "client.toml", (
            'serverAddr = "127.0.0.1"\nserverPort = "x"\nlog.levle = "info"\n'
            '[[proxies]]\nname = "a"\nlocalPort = 0\n'
            '[[proxies]]\nname = "b"\nlocalPrt = 22\n'
        ))
        code, out = run_verify(str(path))
        assert code == 1
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert errors == [
            f"error: {path}: 'serverPort' must be an integer from 1 to 65535, got \"x\"",
            f"error: {path}: unknown key 'log.levle'; did you mean 'log.level'?",
            f"error: {path}: 'localPort' in proxy 'a' must be an integer from 1 to 65535, got 0",
            f"error: {path}: unknown key 'localPrt' in proxy 'b'; did you mean 'localPort'?",
        ]
        assert out.splitlines()[-1] == f"{path}: 4 error(s) in this client file; nothing was started"

    def test_errors_that_span_keys_are_found_in_a_file_whose_keys_are_each_right(self, tmp_path: Path) -> None:
        path = write(tmp_path / "server.toml", 'bindPort = 7000\nsmtp.host = "mail.example.org"\n')
        code, out = run_verify(str(path))
        assert code == 1
        assert "'smtp.host' is set but 'smtp.from' or 'smtp.to' is missing" in out

    def test_server_errors_and_webhooks(self, tmp_path: Path) -> None:
        path = write(tmp_path / "server.toml", (
            'bindPort = 70000\nallowPorts = [{start = 20, end = 10}]\n'
            '[[webhooks]]\nname = "x"\n'
            '[[webhooks]]\nurl = "https://example.org/h"\nformt = "json"\n'
        ))
        verdict = verify_file(path)
        assert verdict.kind == "server" and not verdict.ok
        assert len(verdict.errors) == 4, verdict.errors
        assert "'bindPort' must be" in verdict.errors[0]
        assert "'allowPorts' must be" in verdict.errors[1]
        assert "webhook 'x' has no url" in verdict.errors[2]
        assert "unknown key 'formt' in webhook #2; did you mean 'format'?" in verdict.errors[3]

    def test_the_kind_can_be_given(self, tmp_path: Path) -> None:
        path = write(tmp_path / "x.toml", 'user = "me"\n')
        assert run_verify(str(path), "--client")[0] == 0
        code, out = run_verify(str(path), "--server")
        assert code == 1 and "unknown key 'user'" in out

    def test_a_missing_file(self, tmp_path: Path) -> None:
        code, out = run_verify(str(tmp_path / "nope.toml"))
        assert code == 1 and "not found" in out

    def test_verify_checks_included_files(self, tmp_path: Path) -> None:
        path = write(tmp_path / "frpc.toml", 'serverAddr = "127.0.0.1"\nincludes = ["conf.d/*.toml"]\n')
        write(tmp_path / "conf.d" / "x.toml", '[[proxies]]\nname = "x"\nlocalPort = "ssh"\n')
        code, out = run_verify(str(path))
        assert code == 1 and "x.toml: 'localPort' in proxy 'x' must be an integer" in out
