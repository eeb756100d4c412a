"""
``twistd gotaxy-client`` options: ``--token-file`` reads the token from a
file (a systemd credential, a Docker secret) and says what is wrong with one
it cannot use.
"""

from __future__ import annotations

import pytest
from twisted.python import usage

from gotaxy.client import tap

BASE = ["--server", "127.0.0.1:7000", "--tunnel", "ssh=tcp:127.0.0.1:22"]


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions([*BASE, *argv])
    return options


def test_the_token_is_the_files_first_line_without_white_space(tmp_path):
    path = tmp_path / "token"
    path.write_text("  gtx_abc123  \n\n")
    assert parse("--token-file", str(path)).loaded_config.token == "gtx_abc123"


def test_token_file_overrides_the_config_files_token(tmp_path):
    config = tmp_path / "client.toml"
    config.write_text('auth.token = "from-the-file"\n')
    path = tmp_path / "token"
    path.write_text("from-the-credential\n")
    options = parse("--config", str(config), "--token-file", str(path))
    assert options.loaded_config.token == "from-the-credential"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "--token-file {path}: cannot read it (No such file or directory); check the path and that this user "
               "may read it"),
        ("\n  \n", "--token-file {path} is empty; put the client's token in it ('gotaxy token create NAME' prints one)"),
        ("x" * 5000, "--token-file {path}: longer than 4096 bytes, so not a token file; put only the token in it"),
        (b"\xff\xfe", "--token-file {path}: not text; put only the token in it"),
    ],
)
def test_a_token_file_it_cannot_use_is_one_sentence(tmp_path, content, message):
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(usage.UsageError) as e:
        parse("--token-file", str(path))
    assert str(e.value) == message.format(path=path)


def test_token_and_token_file_together_is_an_error(tmp_path):
    path = tmp_path / "token"
    path.write_text("gtx_x\n")
    with pytest.raises(usage.UsageError, match="--token and --token-file both give the token; keep one of them"):
        parse("--token", "gtx_y", "--token-file", str(path))
