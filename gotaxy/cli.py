# -*- test-case-name: tests.test_cli -*-
"""
``gotaxy``: manage client tokens and the operator account in a server's store,
convert frp's old files.

    gotaxy token create NAME [--expires-in DAYS]    (prints a join token, gtx1.PIN.SECRET)
    gotaxy token list
    gotaxy token revoke NAME
    gotaxy cert issue NAME [--days N] [--out DIR] [--server HOST:PORT] [--force]
    gotaxy cert list [--json]
    gotaxy cert revoke SERIAL|NAME                 (its client is disconnected within seconds)
    gotaxy cluster add-node NAME [--address A]... [--out DIR] [--force]   (a new node's TLS files)
    gotaxy convert FILE.ini [-o FILE.toml] [--server | --client] [--force]
    gotaxy verify FILE [--server | --client]         (check a config file; exit 0 or 1)
    gotaxy admin reset-password [--user NAME] [--password-stdin]
    gotaxy admin disable-totp [--user NAME]
    gotaxy migrate                                   (apply the store's schema migrations)
    gotaxy --version

It works on the store directly (``--database-url``, else ``database.url`` of
``DATA_DIR/server.toml``, else SQLite in ``--data-dir``), so it can run
while the server does (SQLite in WAL mode lets a second process write): a
running server reads the token.revoked event from the store within half a
second (``gotaxy.server.outbox``), disconnects the client and sends its
notifications, and it reads the operator's password hash and second factor from the
store at every log-in, so a reset takes effect at the next one.  A reset also
ends the operator's panel sessions.  ``convert`` needs no store: it writes
frp's legacy INI file as frp's TOML (see ``gotaxy.frp_ini``).  Nor does
``verify``, which prints every error and warning of a server or client file
(``gotaxy.config.verify``) and starts nothing.

``cert issue`` signs a client certificate with the server's own CA
(``DATA_DIR/tls/ca.pem`` and ``ca.key``, which the server made at its first
start; made now if not), writes ``NAME.pem`` and ``NAME.key`` with mode 0600
(never over an existing file without ``--force``), records the certificate
(never its key) in the store, and prints what to put in the client's config.
``cluster add-node`` needs no store either: it signs a new node's
certificates with the CA in ``DATA_DIR/tls`` and writes them, with the CA's
certificate and never its key, for the operator to copy to the new node
(``gotaxy.tls.cluster``).
``cert revoke`` records the serial as revoked; every server process on the
store reads the ``clientcert.revoked`` event and disconnects the client
within seconds (``gotaxy.server.certificates``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from typing import List, Optional, TextIO

from gotaxy import __version__
from gotaxy.store import lockouts
from gotaxy.config import ConfigError, ServerConfig, parse_client_config, parse_server_config
from gotaxy.config.verify import verify_file
from gotaxy.credentials import new_password
from gotaxy.frp_ini import convert_ini
from gotaxy.jointoken import make_join_token
from gotaxy.names import InvalidName, check_name
from gotaxy.server.operators import MIN_PASSWORD_LENGTH
from gotaxy.server.tap import ADMIN_USER
from gotaxy.store import client_certs
from gotaxy.tls.clients import DEFAULT_DAYS, issue_client_certificate
from gotaxy.store import JOIN_PIN_SETTING, OPERATOR_PASSWORD_CHANGED, Store, StoreError, default_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib


def _when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gotaxy",
        description="Manage a Gotaxy server's client tokens and operator account; convert frp's legacy INI files.",
    )
    parser.add_argument("--version", action="version", version=f"gotaxy {__version__}")
    parser.add_argument("--data-dir", default=ServerConfig().data_dir, help="server data directory [gotaxy-data]")
    parser.add_argument(
        "--database-url", "--store", dest="store", default=None, metavar="URL",
        help="SQLAlchemy URL of the store [database.url of DATA_DIR/server.toml, else SQLite in the data directory]",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="create, list or revoke client tokens")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token; it is printed once")
    create.add_argument("name", help="the client's name, shown in logs and the panel")
    create.add_argument("--expires-in", type=float, metavar="DAYS", help="expire after DAYS days")
    actions.add_parser("list", help="list tokens (never their secret)")
    revoke = actions.add_parser("revoke", help="revoke a token; its client is disconnected")
    revoke.add_argument("name")
    cert = commands.add_parser("cert", help="issue, list or revoke client certificates (transport.tls.trustedCaFile)")
    cert_actions = cert.add_subparsers(dest="action", required=True)
    issue = cert_actions.add_parser(
        "issue", help="sign a client certificate with the server's CA; writes NAME.pem and NAME.key (mode 0600)")
    issue.add_argument("name", help="the client's name: the certificate's CN")
    issue.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"valid for DAYS days [{DEFAULT_DAYS}]")
    issue.add_argument("--out", default=".", metavar="DIR", help="where to write NAME.pem and NAME.key [.]")
    issue.add_argument("--server", metavar="HOST:PORT", help="the server's address, for the client config printed")
    issue.add_argument("--force", action="store_true", help="replace NAME.pem and NAME.key if they exist")
    cert_list = cert_actions.add_parser("list", help="list the certificates issued and the serials revoked")
    cert_list.add_argument("--json", action="store_true", help="as JSON, for scripts")
    cert_revoke = cert_actions.add_parser("revoke", help="revoke by serial or by name; its client is disconnected")
    cert_revoke.add_argument("what", metavar="SERIAL|NAME")
    cluster = commands.add_parser("cluster", help="the TLS identity of several server nodes on one database")
    cluster_actions = cluster.add_subparsers(dest="action", required=True)
    add_node = cluster_actions.add_parser(
        "add-node", help="sign a new node's certificates with this server's CA; copy --out DIR there as DATA_DIR/tls")
    add_node.add_argument("name", help="the new node's DNS name or address (in its certificates)")
    add_node.add_argument("--address", action="append", default=[], metavar="NAME",
                          help="another DNS name or address clients or nodes reach it by (repeatable)")
    add_node.add_argument("--out", metavar="DIR", help="where to write the files [./NAME-tls]")
    add_node.add_argument("--force", action="store_true", help="replace the files in DIR if they exist")
    convert = commands.add_parser(
        "convert", help="write frp's legacy INI file (frps.ini, frpc.ini) as TOML"
    )
    convert.add_argument("file", help="the INI file")
    convert.add_argument(
        "-o", "--output", metavar="FILE", help="where to write the TOML ('-': standard output) [FILE.toml]"
    )
    kind = convert.add_mutually_exclusive_group()
    kind.add_argument("--server", dest="kind", action="store_const", const="server", help="it is an frps.ini")
    kind.add_argument("--client", dest="kind", action="store_const", const="client", help="it is an frpc.ini")
    convert.add_argument("--force", action="store_true", help="replace the output file if it exists")
    verify = commands.add_parser(
        "verify", help="check a server or client config file and print every error and warning (exit 0 or 1)"
    )
    verify.add_argument("file", help="the TOML file (server.toml, client.toml, frps.toml, frpc.toml)")
    verify_kind = verify.add_mutually_exclusive_group()
    verify_kind.add_argument("--server", dest="kind", action="store_const", const="server",
                             help="it is a server file [guessed from its keys]")
    verify_kind.add_argument("--client", dest="kind", action="store_const", const="client",
                             help="it is a client file [guessed from its keys]")
    admin = commands.add_parser("admin", help="recover the operator account (lost password or second factor)")
    admin_actions = admin.add_subparsers(dest="action", required=True)
    reset = admin_actions.add_parser(
        "reset-password", help="set a new operator password (printed once) and end the operator's panel sessions"
    )
    reset.add_argument("--user", default=ADMIN_USER, help=f"the operator account [{ADMIN_USER}]")
    reset.add_argument(
        "--password-stdin", action="store_true",
        help=f"read the new password from stdin (at least {MIN_PASSWORD_LENGTH} characters) instead of making one",
    )
    totp = admin_actions.add_parser("disable-totp", help="turn the operator's second factor (TOTP) off")
    totp.add_argument("--user", default=ADMIN_USER, help=f"the operator account [{ADMIN_USER}]")
    commands.add_parser(
        "migrate",
        help="bring the store's schema up to this version of Gotaxy (the server does it at every start too)",
    )
    return parser


def _configured_url(data_dir: str) -> Optional[str]:
    """``database.url`` (or the older ``store``) of ``DATA_DIR/server.toml``, if it has one."""
    path = os.path.join(data_dir, "server.toml")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        loaded = parse_server_config(tomllib.load(f), source=path)
    return loaded.config.effective_database_url()


def _migrate(store: Store, out: TextIO) -> int:
    for migration in store.applied:
        print(f"applied migration {migration.version}: {migration.description}", file=out)
    version = store.schema_version
    if store.applied:
        print(f"the store {store.shown_url} is now at schema version {version}", file=out)
    else:
        print(f"the store {store.shown_url} is up to date (schema version {version}); nothing to apply", file=out)
    return 0


def _reset_password(store: Store, user: str, from_stdin: bool, stdin: TextIO, out: TextIO) -> int:
    from gotaxy.web.auth import end_sessions  # the panel's table of sessions

    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
        if len(password) < MIN_PASSWORD_LENGTH:
            print(
                f"gotaxy: the new password must have at least {MIN_PASSWORD_LENGTH} characters; nothing changed",
                file=sys.stderr,
            )
            return 1
    else:
        password = new_password()
    if not store.ensure_admin(user, password):
        store.set_admin_password(user, password)
    ended = end_sessions(store.db, user)
    lifted = lockouts.lift_all(store.db)
    store.record_event(OPERATOR_PASSWORD_CHANGED, None, None, None, "via gotaxy admin reset-password")
    if from_stdin:
        print(f"new password set for operator {user!r}", file=out)
    else:
        print(f"new password for operator {user!r} (shown only now): {password}", file=out)
    if ended:
        print(f"ended {ended} panel session(s) of {user!r}", file=out)
    if lifted:
        print(f"lifted {lifted} lock-out(s) after failed log-ins", file=out)
    return 0


def _disable_totp(store: Store, user: str, out: TextIO) -> int:
    from gotaxy.web.auth import remove_second_factor

    if not store.db["admins"].find_one(username=user):
        print(f"gotaxy: no operator account named {user!r}", file=sys.stderr)
        return 1
    if remove_second_factor(store.db, user):
        print(f"second factor (TOTP) turned off for {user!r}; they log in with the password alone", file=out)
    else:
        print(f"{user!r} had no second factor on; nothing changed", file=out)
    return 0


def _write_private(path: str, data: bytes, force: bool) -> None:
    """Write ``path`` with mode 0600 from its creation on; an existing file only with ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # an existing file replaced with --force keeps no looser mode
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _server_fingerprint(data_dir: str) -> Optional[str]:
    """The fingerprint of the certificate the server presents, if it is the one it generated."""
    from gotaxy.tls.fingerprint import fingerprint_of_certificate

    try:
        with open(os.path.join(data_dir, "tls", "server.pem"), "rb") as f:
            return fingerprint_of_certificate(f.read())
    except (OSError, ValueError):
        return None


def _server_config(data_dir: str) -> Optional[ServerConfig]:
    path = os.path.join(data_dir, "server.toml")
    try:
        with open(path, "rb") as f:
            return parse_server_config(tomllib.load(f), source=path).config
    except (OSError, ConfigError, tomllib.TOMLDecodeError):
        return None


def _cert_issue(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    tls_dir = os.path.join(args.data_dir, "tls")
    try:
        issued = issue_client_certificate(tls_dir, args.name, args.days)
    except ValueError as e:
        print(f"gotaxy: {e}", file=sys.stderr)
        return 1
    cert_path = os.path.abspath(os.path.join(args.out, f"{args.name}.pem"))
    key_path = os.path.abspath(os.path.join(args.out, f"{args.name}.key"))
    for path in (cert_path, key_path):
        if os.path.exists(path) and not args.force:
            print(f"gotaxy: {path} exists; choose another directory with --out, or pass --force to replace it",
                  file=sys.stderr)
            return 1
    try:
        _write_private(key_path, issued.key_pem, args.force)
        _write_private(cert_path, issued.certificate_pem, args.force)
    except FileExistsError as e:
        print(f"gotaxy: {e.filename} exists; choose another directory with --out, or pass --force to replace it",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gotaxy: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    client_certs.record_issued(store, issued, "gotaxy cert issue", datetime.datetime.now(datetime.timezone.utc).timestamp())
    print(f"client certificate for {issued.name!r}, serial {issued.serial}, valid until "
          f"{_when(issued.not_after)}:", file=out)
    print(f"  certificate  {cert_path}", file=out)
    print(f"  key          {key_path}  (mode 0600: copy it to the client only, and delete it here)", file=out)
    host, port = "SERVER", "7000"
    if args.server:
        host, _, port = args.server.rpartition(":") if ":" in args.server else (args.server, "", "7000")
    config = _server_config(args.data_dir)
    fingerprint = _server_fingerprint(args.data_dir)
    lines = [f'serverAddr = "{host.strip("[]")}"', f"serverPort = {port or 7000}", 'auth.method = "certificate"',
             f'transport.tls.certFile = "{os.path.basename(cert_path)}"',
             f'transport.tls.keyFile = "{os.path.basename(key_path)}"']
    if fingerprint is not None:
        lines.append(f'transport.tls.fingerprint = "{fingerprint}"')
    print("in the client's config (client.toml; paths relative to where the client runs):", file=out)
    for line in lines:
        print(f"  {line}", file=out)
    command = ["twistd", "-n", "gotaxy-client", "--server", f"{host}:{port or 7000}", "--cert",
               os.path.basename(cert_path), "--key", os.path.basename(key_path)]
    if fingerprint is not None:
        command += ["--fingerprint", fingerprint]
    print(f"or: {' '.join(shlex.quote(c) for c in command)} --tunnel NAME=tcp:LOCALPORT", file=out)
    ca = os.path.abspath(os.path.join(tls_dir, "ca.pem"))
    if config is None or config.transport.tls_trusted_ca_file is None:
        print(f"gotaxy: the server does not ask for client certificates yet: set transport.tls.trustedCaFile = "
              f"\"{ca}\" (and auth.method = \"certificate\" for no token) in its server.toml and restart it",
              file=sys.stderr)
    elif config.auth_method != "certificate":
        print("gotaxy: the server also asks for a token (auth.method = \"token\"): give the client one of "
              f"{issued.name!r} ('gotaxy token create {issued.name}') and leave auth.method out of its config",
              file=sys.stderr)
    return 0


def _add_node(args: argparse.Namespace, out: TextIO) -> int:
    from gotaxy.tls.cluster import issue_node_bundle

    tls_dir = os.path.join(args.data_dir, "tls")
    target = args.out or f"{args.name}-tls"
    try:
        bundle = issue_node_bundle(tls_dir, args.name, args.address, target, args.force)
    except ValueError as e:
        print(f"gotaxy: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gotaxy: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"node {bundle.name!r}: certificates signed by the cluster CA {bundle.ca_fingerprint}, in "
          f"{bundle.directory}:", file=out)
    print("  ca.pem                  the cluster CA's certificate (its key stays here)", file=out)
    print(f"  server.pem, server.key  what clients see on its control port ({bundle.server_fingerprint})", file=out)
    print("  node.pem, node.key      what it shows the other nodes (node-to-node TLS)", file=out)
    print(f"copy the directory to the new node as its DATA_DIR/tls (mode 0700) before its first start, give it the "
          f"same database.url and notify.keyFile, then delete {bundle.directory} here;", file=out)
    print(f"join tokens made on any node pin the cluster CA and work on every node; clients pinned with "
          f"--fingerprint accept every node with --fingerprint {bundle.ca_fingerprint}", file=out)
    return 0


def _cert_list(store: Store, as_json: bool, out: TextIO) -> int:
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    records = client_certs.list_certificates(store.db)
    if as_json:
        print(json.dumps([r.to_json(now) for r in records], indent=2), file=out)
        return 0
    print(f"{'SERIAL':<42} {'NAME':<24} {'ISSUED':<21} {'EXPIRES':<21} STATE", file=out)
    for r in records:
        state = r.status(now)
        if r.revoked_at is not None:
            state += f" {_when(r.revoked_at)} by {r.revoked_by}"
        print(f"{r.serial:<42} {r.name or '(made elsewhere)':<24} {_when(r.issued_at):<21} {_when(r.not_after):<21} "
              f"{state}", file=out)
    return 0


def _cert_revoke(store: Store, what: str, out: TextIO) -> int:
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    try:
        revoked = client_certs.revoke(store, what, "gotaxy cert revoke", now)
    except client_certs.CertificateNotFound as e:
        print(f"gotaxy: {e}", file=sys.stderr)
        return 1
    if not revoked:
        print(f"gotaxy: the certificates of {what!r} were revoked already; nothing changed", file=sys.stderr)
        return 1
    for r in revoked:
        print(f"revoked client certificate {r.serial}" + (f" of {r.name!r}" if r.name else "")
              + "; a server using this store disconnects its client within seconds", file=out)
    return 0


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> int:
    args = _parser().parse_args(argv)
    if args.command == "convert":
        return convert(args.file, args.output, args.kind, args.force, out)
    if args.command == "verify":
        return verify(args.file, args.kind, out)
    if args.command == "cluster":
        return _add_node(args, out)
    if args.command == "cert" and args.action == "issue":
        try:
            check_name(args.name, "a client certificate's name (its client's name)")
        except InvalidName as e:
            print(f"gotaxy: {e}", file=sys.stderr)
            return 1
    if getattr(args, "action", None) == "create":
        try:
            check_name(args.name, "a token's name (its client's name)")
        except InvalidName as e:
            print(f"gotaxy: {e}", file=sys.stderr)
            return 1
    if args.store is None:
        try:
            args.store = _configured_url(args.data_dir)
        except (ConfigError, OSError, tomllib.TOMLDecodeError) as e:
            print(f"gotaxy: {e}", file=sys.stderr)
            return 1
    if args.store is None and not os.path.exists(os.path.join(args.data_dir, "gotaxy.db")):
        print(
            f"gotaxy: no store in {args.data_dir!r}; start the server once or pass --data-dir/--database-url",
            file=sys.stderr,
        )
        return 1
    if args.store is not None and args.store.startswith("sqlite:///"):
        # A SQLite URL to a file that does not exist would create an empty store.
        path = args.store[len("sqlite:///") :]
        if path and path != ":memory:" and not os.path.exists(path):
            print(f"gotaxy: no store at {path!r}; check --database-url", file=sys.stderr)
            return 1
    if getattr(args, "expires_in", None) is not None and args.expires_in <= 0:
        print("gotaxy: --expires-in takes a number of days greater than 0", file=sys.stderr)
        return 1
    try:
        store = Store(args.store or default_url(args.data_dir))
    except StoreError as e:
        print(f"gotaxy: {e}", file=sys.stderr)
        return 1
    try:
        if args.command == "migrate":
            return _migrate(store, out)
        if args.command == "admin":
            if args.action == "reset-password":
                return _reset_password(store, args.user, args.password_stdin, stdin, out)
            return _disable_totp(store, args.user, out)
        if args.command == "cert":
            if args.action == "issue":
                return _cert_issue(store, args, out)
            if args.action == "list":
                return _cert_list(store, args.json, out)
            return _cert_revoke(store, args.what, out)
        if args.action == "create":
            expires = None
            if args.expires_in is not None:
                expires = datetime.datetime.now(datetime.timezone.utc).timestamp() + args.expires_in * 86400
            record, token = store.create_token(args.name, expires_at=expires)
            pin = store.get_setting(JOIN_PIN_SETTING)
            if pin is not None:
                # A join token: the client checks the server against it
                # before sending the secret; no --fingerprint needed.
                token = make_join_token(pin, token)
            print(f"token for client {record.name!r} (shown only now): {token}", file=out)
            if pin is None:
                print(
                    "gotaxy: this store does not record the server's certificate yet (start the server once "
                    "with this version), so this is a plain token: give the client --fingerprint too, or it "
                    "trusts the server it first reaches",
                    file=sys.stderr,
                )
        elif args.action == "list":
            print(f"{'NAME':<24} {'CREATED':<21} {'EXPIRES':<21} {'LAST USED':<21} STATE", file=out)
            now = datetime.datetime.now(datetime.timezone.utc).timestamp()
            for t in store.list_tokens():
                state = "revoked" if t.revoked_at else ("active" if t.active(now) else "expired")
                print(
                    f"{t.name:<24} {_when(t.created_at):<21} {_when(t.expires_at):<21} "
                    f"{_when(t.last_used_at):<21} {state}",
                    file=out,
                )
        elif args.action == "revoke":
            if not store.revoke_token(args.name):
                print(f"gotaxy: no active token named {args.name!r}", file=sys.stderr)
                return 1
            print(f"revoked the token of {args.name!r}", file=out)
    except StoreError as e:
        print(f"gotaxy: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def verify(path: str, kind: Optional[str], out: TextIO) -> int:
    """``gotaxy verify``: every error and warning of the config file at ``path``; 0 if it has no error."""
    verdict = verify_file(path, kind)
    for error in verdict.errors:
        print(f"error: {error}", file=out)
    for warning in verdict.warnings:
        print(f"warning: {warning}", file=out)
    warned = f"; {len(verdict.warnings)} warning(s)" if verdict.warnings else ""
    if verdict.ok:
        print(f"{path}: a valid {verdict.kind} file{warned}", file=out)
        return 0
    print(f"{path}: {len(verdict.errors)} error(s) in this {verdict.kind} file{warned}; nothing was started",
          file=out)
    return 1


def convert(path: str, output: Optional[str], kind: Optional[str], force: bool, out: TextIO) -> int:
    """``gotaxy convert``: frp's legacy INI file at ``path`` as TOML."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        print(f"gotaxy: no file {path!r}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"gotaxy: {path}: the file must be UTF-8 text; save it as UTF-8 and convert again", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gotaxy: cannot read {path!r}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        result = convert_ini(text, path, kind)
    except ConfigError as e:
        print(f"gotaxy: {e}", file=sys.stderr)
        return 1
    toml_text = result.toml(os.path.basename(path))
    target = output or os.path.splitext(path)[0] + ".toml"
    report = sys.stderr if target == "-" else out
    if target == "-":
        out.write(toml_text)
    else:
        try:
            # The file holds the token: readable by its owner only, and never
            # written over by accident.
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
            with os.fdopen(os.open(target, flags, 0o600), "w", encoding="utf-8") as f:
                f.write(toml_text)
        except FileExistsError:
            print(f"gotaxy: {target!r} exists; choose another file with -o, or pass --force to replace it",
                  file=sys.stderr)
            return 1
        except OSError as e:
            print(f"gotaxy: cannot write {target!r}: {e.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {target} (frp's TOML format, a {result.kind} file)", file=report)
    for note in result.notes:
        print(f"not converted: {note}", file=report)
    parse = parse_server_config if result.kind == "server" else parse_client_config
    shown = "the output" if target == "-" else target
    try:
        loaded = parse(tomllib.loads(toml_text), source=shown)
    except ConfigError as e:
        print(f"gotaxy: Gotaxy refuses the converted file as it is: {e}", file=sys.stderr)
        return 1
    if loaded.warnings:
        print(f"Gotaxy ignores {len(loaded.warnings)} of its frp settings, with these warnings at start:", file=report)
        for warning in loaded.warnings:
            print(f"  {warning}", file=report)
    if target != "-":
        print(f"start with: twistd -n gotaxy-{result.kind} --config {shlex.quote(target)}", file=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
