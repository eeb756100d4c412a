"""
Tests for gotaxy.cli: ``gotaxy token create|list|revoke`` on a server's store.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import List, Tuple

import pytest

from gotaxy.cli import main
from gotaxy.credentials import TOKEN_PREFIX
from gotaxy.jointoken import JoinToken, parse_join_token
from gotaxy.store import JOIN_PIN_SETTING, Store, default_url

TOKEN_RE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")


PIN = "SHA256:" + "5A" * 32


@pytest.fixture(scope="module")
def blank_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("blank-store")
    store = Store(default_url(str(directory)))
    store.set_setting(JOIN_PIN_SETTING, PIN)  # the server records its join pin at every start
    store.close()
    return directory


@pytest.fixture
def data_dir(tmp_path: Path, blank_store: Path) -> str:
    """A data directory as the server leaves it after its first start."""
    for path in blank_store.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return str(tmp_path)


def gotaxy(capsys: pytest.CaptureFixture, *argv: str) -> Tuple[int, str, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


def authenticate(data_dir: str, token: str):
    store = Store(default_url(data_dir))
    try:
        return store.authenticate_token(token)
    finally:
        store.close()


def test_create_prints_a_working_token_once(capsys, data_dir: str) -> None:
    code, out, err = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "laptop")
    assert (code, err) == (0, "")
    tokens: List[str] = TOKEN_RE.findall(out)
    assert len(tokens) == 1
    assert "laptop" in out and "shown only now" in out
    record = authenticate(data_dir, tokens[0])
    assert record is not None and record.name == "laptop" and record.expires_at is None
    # It is printed as a join token that pins the server.
    (printed,) = re.findall(r"gtx1\.\S+", out)
    assert parse_join_token(printed) == JoinToken(pin=PIN, secret=tokens[0])


def test_without_a_recorded_pin_the_token_is_plain_and_says_so(capsys, tmp_path: Path) -> None:
    Store(default_url(str(tmp_path))).close()  # a store no server of this version has started on
    code, out, err = gotaxy(capsys, "--data-dir", str(tmp_path), "token", "create", "laptop")
    assert code == 0
    assert "gtx1." not in out and len(TOKEN_RE.findall(out)) == 1
    assert err == (
        "gotaxy: this store does not record the server's certificate yet (start the server once with this "
        "version), so this is a plain token: give the client --fingerprint too, or it trusts the server it "
        "first reaches\n"
    )


def test_list_shows_names_and_states_but_never_a_token(capsys, data_dir: str) -> None:
    tokens = []
    for name in ("alice", "bob", "carol"):
        _, out, _ = gotaxy(capsys, "--data-dir", data_dir, "token", "create", name)
        tokens.append(TOKEN_RE.search(out).group())
    store = Store(default_url(data_dir))
    store.create_token("old", expires_at=1.0)  # long expired
    store.close()
    gotaxy(capsys, "--data-dir", data_dir, "token", "revoke", "bob")

    code, out, err = gotaxy(capsys, "--data-dir", data_dir, "token", "list")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "EXPIRES", "LAST", "USED", "STATE"]
    states = {line.split()[0]: line.split()[-1] for line in lines[1:]}
    assert states == {"alice": "active", "bob": "revoked", "carol": "active", "old": "expired"}
    assert TOKEN_PREFIX not in out
    for token in tokens:
        assert token not in out


def test_list_shows_expiry_and_last_use(capsys, data_dir: str) -> None:
    _, out, _ = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "laptop", "--expires-in", "30")
    authenticate(data_dir, TOKEN_RE.search(out).group())
    _, out, _ = gotaxy(capsys, "--data-dir", data_dir, "token", "list")
    (row,) = out.splitlines()[1:]
    # Created, expires and last used are all dates now; none is "-".
    assert row.count("UTC") == 3 and " - " not in row


def test_empty_list_is_just_the_header(capsys, data_dir: str) -> None:
    code, out, _ = gotaxy(capsys, "--data-dir", data_dir, "token", "list")
    assert code == 0 and len(out.splitlines()) == 1


def test_revoke_stops_the_token_working(capsys, data_dir: str) -> None:
    _, out, _ = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "laptop")
    token = TOKEN_RE.search(out).group()
    code, out, err = gotaxy(capsys, "--data-dir", data_dir, "token", "revoke", "laptop")
    assert (code, err) == (0, "")
    assert "revoked" in out and "laptop" in out
    assert authenticate(data_dir, token) is None


def test_expiring_token(capsys, data_dir: str) -> None:
    _, out, _ = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "temp", "--expires-in", "1")
    record = authenticate(data_dir, TOKEN_RE.search(out).group())
    assert record is not None and record.expires_at is not None
    assert record.expires_at - record.created_at == pytest.approx(86400, abs=5)


def test_store_url_overrides_data_dir(capsys, tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "elsewhere.db")
    Store(url).close()  # as a server started with --store leaves it
    code, out, _ = gotaxy(capsys, "--store", url, "token", "create", "laptop")
    assert code == 0
    store = Store(url)
    try:
        assert store.authenticate_token(TOKEN_RE.search(out).group()) is not None
    finally:
        store.close()


def test_missing_store_is_a_clear_error(capsys, tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    code, out, err = gotaxy(capsys, "--data-dir", str(empty), "token", "list")
    assert code == 1 and out == ""
    assert "no store in" in err and str(empty) in err and "--data-dir" in err
    assert "Traceback" not in err
    # And it did not create one behind the user's back.
    assert not empty.exists()


def test_revoking_an_unknown_name_is_a_clear_error(capsys, data_dir: str) -> None:
    code, out, err = gotaxy(capsys, "--data-dir", data_dir, "token", "revoke", "ghost")
    assert code == 1
    assert err.strip() == "gotaxy: no active token named 'ghost'"


def test_revoking_twice_is_an_error_the_second_time(capsys, data_dir: str) -> None:
    gotaxy(capsys, "--data-dir", data_dir, "token", "create", "laptop")
    assert gotaxy(capsys, "--data-dir", data_dir, "token", "revoke", "laptop")[0] == 0
    assert gotaxy(capsys, "--data-dir", data_dir, "token", "revoke", "laptop")[0] == 1


def test_duplicate_name_is_a_clear_error_and_prints_no_token(capsys, data_dir: str) -> None:
    _, out, _ = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "laptop")
    first = TOKEN_RE.search(out).group()
    code, out, err = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "laptop")
    assert code == 1
    assert TOKEN_PREFIX not in out
    assert err.startswith("gotaxy: ") and "already exists" in err and "revoke it first" in err
    assert "Traceback" not in err
    assert authenticate(data_dir, first) is not None


def test_too_long_name_is_a_clear_error(capsys, data_dir: str) -> None:
    code, _, err = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "x" * 65)
    assert code == 1 and "must be 1 to 64 letters, digits" in err


def test_usage_errors_exit_with_argparse_status(capsys, data_dir: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--data-dir", data_dir, "token"])
    assert exit_.value.code == 2
    assert "usage: gotaxy" in capsys.readouterr().err


def test_expiry_must_be_in_the_future(capsys, data_dir: str) -> None:
    for days in ("0", "-1"):
        code, out, err = gotaxy(capsys, "--data-dir", data_dir, "token", "create", "x", "--expires-in", days)
        assert code == 1 and "greater than 0" in err and TOKEN_PREFIX not in out


def test_store_url_to_a_missing_file_is_refused(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    code, _, err = gotaxy(capsys, "--store", f"sqlite:///{missing}", "token", "list")
    assert code == 1 and "no store at" in err
    assert not missing.exists()


# -- gotaxy convert ----------------------------------------------------------------

FRP_CONF = Path(__file__).parent / "frp_conf"


def test_convert_writes_toml_next_to_the_ini(capsys, tmp_path: Path) -> None:
    ini = tmp_path / "frps.ini"
    shutil.copy(FRP_CONF / "frps_legacy_full.ini", ini)
    # No store is needed (and none exists here).
    code, out, err = gotaxy(capsys, "--data-dir", str(tmp_path / "none"), "convert", str(ini))
    assert (code, err) == (0, "")
    target = tmp_path / "frps.toml"
    assert f"wrote {target} (frp's TOML format, a server file)" in out
    assert "Gotaxy ignores 12 of its frp settings, with these warnings at start:" in out
    assert "'kcpBindPort' is an frp setting" in out
    assert f"start with: twistd -n gotaxy-server --config {target}" in out
    assert target.stat().st_mode & 0o777 == 0o600  # it holds the token
    assert target.read_text().startswith("# Converted by 'gotaxy convert' from frps.ini")

    # A second run does not overwrite it ...
    code, _, err = gotaxy(capsys, "convert", str(ini))
    assert code == 1
    assert err == f"gotaxy: {str(target)!r} exists; choose another file with -o, or pass --force to replace it\n"
    # ... unless told to.
    target.write_text("old")
    assert gotaxy(capsys, "convert", str(ini), "--force")[0] == 0
    assert target.read_text() != "old"


def test_convert_to_standard_output(capsys, tmp_path: Path) -> None:
    ini = tmp_path / "old.ini"
    ini.write_text("[common]\ntoken = s3cret\nlog_way = file\n")
    code, out, err = gotaxy(capsys, "convert", str(ini), "--client", "-o", "-")
    assert code == 0
    assert out.endswith('[auth]\ntoken = "s3cret"\n')
    assert "not converted: [common] log_way (frp's TOML has only log.to, taken from log_file)" in err
    assert not (tmp_path / "old.toml").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[common]\ntoken = x\n", "cannot tell whether this is a server (frps.ini) or a client (frpc.ini) file; pass --server or --client"),
        ("bind_port = 7000\n", "not a valid frp INI file"),
        ("[common]\nbind_port = seven\n", "[common] bind_port must be an integer, got 'seven'"),
    ],
)
def test_convert_errors(capsys, tmp_path: Path, text: str, message: str) -> None:
    ini = tmp_path / "x.ini"
    ini.write_text(text)
    code, _, err = gotaxy(capsys, "convert", str(ini))
    assert code == 1 and message in err and err.startswith("gotaxy: ")
    assert not (tmp_path / "x.toml").exists()


def test_convert_says_when_gotaxy_refuses_the_result(capsys, tmp_path: Path) -> None:
    ini = tmp_path / "frpc.ini"
    ini.write_text("[common]\nserver_addr = x\ntls_enable = false\n")
    code, _, err = gotaxy(capsys, "convert", str(ini))
    assert code == 1
    assert err == (
        f"gotaxy: Gotaxy refuses the converted file as it is: {tmp_path / 'frpc.toml'}: "
        "'transport.tls.enable' must be true (Gotaxy always uses TLS; remove transport.tls.enable), got false\n"
    )


def test_convert_missing_file(capsys, tmp_path: Path) -> None:
    code, _, err = gotaxy(capsys, "convert", str(tmp_path / "nope.ini"))
    assert code == 1 and err == f"gotaxy: no file {str(tmp_path / 'nope.ini')!r}\n"


def test_reset_password_lifts_lock_outs(capsys, data_dir: str) -> None:
    """Lock-outs live in the store (every server process sees them), so a restart no longer lifts them: a reset does."""
    from gotaxy.store import lockouts

    store = Store(default_url(data_dir))
    store.ensure_admin("admin", "the old password")
    lockouts.lock(store.db, lockouts.OPERATOR, lockouts.address_key("10.0.0.1"), 2e9)
    store.close()
    code, out, err = gotaxy(capsys, "--data-dir", data_dir, "admin", "reset-password")
    assert (code, err) == (0, "")
    assert "lifted 1 lock-out(s) after failed log-ins" in out
    store = Store(default_url(data_dir))
    try:
        assert lockouts.locked_for(store.db, lockouts.OPERATOR, lockouts.address_key("10.0.0.1"), 1e9) == 0
    finally:
        store.close()
