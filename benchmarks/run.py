#!/usr/bin/env python3
"""
Compare Gotaxy with a direct connection and with ``ssh -R``, on loopback.

One run starts, in a temporary directory and on ephemeral 127.0.0.1 ports:

* the targets: an nginx serving one small static file (access_log off) and
  one iperf3 server per path (so a test that wedges one cannot spoil the
  others);
* Gotaxy: ``twistd gotaxy-server`` and ``twistd gotaxy-client`` from this
  checkout, with two tunnels (HTTP and iperf3) over its TLS connection;
* OpenSSH: a throwaway ``sshd`` with a fresh host key and a client that
  forwards the same two ports with ``ssh -R`` (default cipher).

Then every workload runs against each path in turn, interleaved so that
drift of the machine hits all three alike:

* iperf3, one stream, public side to service and back (``-R``);
* wrk, HTTP GET of the file over keep-alive connections, and with
  ``Connection: close`` so that every request opens a new connection
  (through a tunnel that is a new stream/channel per request).

* UDP (``--no-udp`` skips it, ``--udp-only`` runs only it): ``iperf3 -u`` with 1,200-byte datagrams,
  direct, through a plain one-hop relay (``socat UDP-LISTEN:…,fork UDP:…``,
  the practical limit, with a socat TCP relay for iperf3's control
  connection) and through a Gotaxy ``udp`` tunnel (and a ``tcp`` one on the
  same public port number for the control connection).  The rate steps up
  (all three paths at each step) until a path loses 1 % or more, and the
  gap to the last rate that passed is halved twice; the figure is the
  highest rate with under 1 % loss, as received, and its datagrams per
  second.
  Then "TCP alone vs TCP during a UDP flood": one iperf3 TCP stream alone
  and while ``iperf3 -u`` floods the same path's udp port at four times
  the highest rate gotaxy's udp tunnel passed (beyond its capacity), direct
  (what the flood costs the machine itself) and through gotaxy (the tcp and
  udp tunnels of one client); the goal is at least 80 % kept.
  ``benchmarks/compare_flood.py`` interleaves that row for two checkouts.

Websites by name (``--no-vhost`` skips them): the same nginx reached by
``Host: web.bench.test`` four ways, with wrk keep-alive and new connection
per request, interleaved the same way:

* nginx direct;
* nginx as a reverse proxy in front of it (the cost of one HTTP hop: the
  practical limit for any HTTP front);
* Gotaxy's ``type = "http"`` tunnel on its ``vhostHTTPPort`` (a second
  server and client, so that the TCP rows above are not disturbed);
* the same tunnel over HTTPS, TLS terminated at the Gotaxy server
  (``vhostHTTPSPort`` with a certificate for ``localhost`` that the run
  makes with openssl in ``vhostHTTPSCertDir``; wrk connects to
  ``https://localhost``, so that its SNI names the site, and sends the
  same Host header);
* PageKite (Debian package ``pagekite``), a Python reverse tunnel that
  routes by Host, as a peer: a front end and a back end, plain TCP between
  them.

Reconnect after a server restart (``--no-restart`` skips it,
``--restart-only`` runs only it and needs nothing but twistd): a server and
a client with one tcp tunnel to an echo service; five times with SIGTERM
(a clean stop: the server says goodbye) and five times with SIGKILL, the
server is stopped and a new one spawned on the same data directory and
port, timed from the spawn to its control port listening and to one byte
echoed through the tunnel by the client connected before.

While a workload runs, the CPU time of the tunnel processes is sampled from
/proc, and after the load their VmRSS and VmHWM are read.  The results are
printed as a table (``--markdown`` for docs/benchmarks.md).  Every process
started here runs in its own process group and is killed on the way out,
whatever happens.

Nothing is sent to any address but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import attrs

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
FILE_NAME = "file"

#: (executable, Debian package that provides it)
REQUIRED_TOOLS = [
    ("iperf3", "iperf3"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("socat", "socat"),
]

DIRECT, GOTAXY, SSH = "direct", "gotaxy", "ssh -R"
PATHS = (DIRECT, GOTAXY, SSH)

#: The websites-by-name paths (see the module docstring) and the name they answer to.
NGINX_DIRECT, NGINX_PROXY, GOTAXY_HTTP, PAGEKITE = "nginx direct", "nginx proxy", "gotaxy http", "pagekite"
GOTAXY_HTTPS = "gotaxy https"
VHOST_PATHS = (NGINX_DIRECT, NGINX_PROXY, GOTAXY_HTTP, GOTAXY_HTTPS, PAGEKITE)
#: The name wrk reaches the https path by: it resolves to 127.0.0.1, and wrk sends it as the SNI.
TLS_NAME = "localhost"
VHOST_NAME = "web.bench.test"


class BenchmarkError(Exception):
    """Setting up a path failed; the message says which and where to look."""


# --- finding the tools -------------------------------------------------------


def find_tool(name: str) -> Optional[str]:
    for directory in (None, "/usr/sbin", "/sbin"):
        found = shutil.which(name, path=directory)
        if found:
            return found
    return None


def find_twistd() -> Optional[str]:
    sibling = Path(sys.executable).with_name("twistd")
    if sibling.exists():
        return str(sibling)
    return shutil.which("twistd")


def locate_tools() -> Dict[str, str]:
    tools: Dict[str, str] = {}
    missing: List[str] = []
    packages: List[str] = []
    for name, package in REQUIRED_TOOLS:
        found = find_tool(name)
        if found is not None:
            tools[name] = found
            continue
        missing.append(f"{name} (Debian package {package})")
        if package not in packages:
            packages.append(package)
    pagekite = find_tool("pagekite")  # optional: the PageKite row (Debian package pagekite)
    if pagekite is not None:
        tools["pagekite"] = pagekite
    twistd = find_twistd()
    if twistd is None:
        missing.append("twistd (pip install -e . in this repository)")
    else:
        tools["twistd"] = twistd
    if missing:
        fix = f"apt-get install {' '.join(packages)}" if packages else "pip install -e ."
        raise SystemExit(
            f"benchmarks/run.py needs tools that are not installed: {'; '.join(missing)}. "
            f"Install them ({fix}) and retry."
        )
    return tools


def tool_version(argv: Sequence[str], pattern: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "?"


# --- processes ---------------------------------------------------------------


class ProcessGroup:
    """The processes this run started; each in its own session, all killed on close."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: List[Tuple[str, subprocess.Popen]] = []
        #: name -> processes it forked that left its process group (sshd's
        #: per-connection sessions call setsid); stopped just before it.
        self.strays: Dict[str, List[int]] = {}

    def start(
        self, name: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None
    ) -> subprocess.Popen:
        log = open(self.log_path(name), "wb")
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        self.started.append((name, process))
        return process

    def process_groups(self) -> Set[int]:
        """Process group ids of everything started here (sshd's sessions lead their own)."""
        groups = {process.pid for _, process in self.started}
        for pids in self.strays.values():
            groups.update(pids)
        return groups

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name.replace(' ', '-')}.log"

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self, grace: float = 3) -> None:
        """
        Stop everything, newest first, so that each client goes before its
        server (the ssh client before sshd, which then reaps its session).
        """
        for name, process in reversed(self.started):
            strays = self.strays.get(name, [])
            for pid in strays:
                _signal_process(pid, signal.SIGTERM)
            _wait_gone(strays, grace)
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                progress(f"note: {name} (pid {process.pid}) was still running {grace:g} s after SIGTERM; killing it")
            _signal_group(process.pid, signal.SIGKILL)
            for pid in strays:
                _signal_process(pid, signal.SIGKILL)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                progress(f"warning: {name} (pid {process.pid}) survived SIGKILL")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_process(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_running(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def children_of(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def descendants_of(pid: int) -> List[int]:
    found: List[int] = []
    pending = [pid]
    while pending:
        for child in children_of(pending.pop()):
            found.append(child)
            pending.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@attrs.frozen
class MachineCpu:
    """
    CPU seconds of the whole machine, split into this benchmark's and the rest.

    On a shared machine other work competes for the same cores; the share it
    took during a run is reported next to the figures so that a noisy run can
    be recognised.
    """

    busy: float  # user + nice + system, all CPUs
    steal: float  # taken by the hypervisor
    ours: float  # everything this script started, load generators included

    def foreign_since(self, earlier: "MachineCpu") -> float:
        return max(0.0, (self.busy - earlier.busy) - (self.ours - earlier.ours))


def machine_cpu(group: "ProcessGroup") -> MachineCpu:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _, _, _, _, steal = (int(f) for f in fields[:8])
    groups = group.process_groups()
    ours = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) in groups:
            ours += (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return MachineCpu((user + nice + system) / CLOCK_TICKS, steal / CLOCK_TICKS, ours)


@attrs.frozen
class Memory:
    rss_kib: int
    hwm_kib: int


def memory_of(pid: int) -> Optional[Memory]:
    values: Dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    except OSError:
        return None
    if len(values) != 2:
        return None
    return Memory(values["VmRSS"], values["VmHWM"])


# --- ports -------------------------------------------------------------------


def free_ports(count: int) -> List[int]:
    """Distinct ports that were free a moment ago (the kernel picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def is_listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port or 0.0.0.0:port (without connecting to it)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if fields[1] in wanted and fields[3] == "0A":
            return True
    return False


def wait_until(
    what: str,
    ready: Callable[[], bool],
    processes: Sequence[Tuple[str, subprocess.Popen]],
    group: ProcessGroup,
    timeout: float = 30,
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for name, process in processes:
            if process.poll() is not None:
                raise BenchmarkError(
                    f"{name} exited with status {process.returncode} while waiting for {what}; "
                    f"its log ({group.log_path(name)}) ends with:\n{textwrap.indent(group.log_tail(name), '    ')}"
                )
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"  {name} ({group.log_path(name)}):\n{textwrap.indent(group.log_tail(name), '    ')}"
                for name, _ in processes
            )
            raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}.\n{tails}")
        time.sleep(0.1)


# --- the paths ---------------------------------------------------------------


@attrs.define
class PathEndpoints:
    """Where the load generators connect for one path, and which processes carry it."""

    path: str
    http_port: int
    iperf_port: int
    #: role ("server", "client") -> pid of the process that carries the tunnel
    carriers: Dict[str, int] = attrs.field(factory=dict)
    #: role -> what the process is called in messages and logs
    names: Dict[str, str] = attrs.field(factory=dict)
    description: str = ""
    #: the Host header wrk sends (websites by name), or None
    host: Optional[str] = None
    #: how wrk reaches http_port: "http" on 127.0.0.1, or "https" on TLS_NAME
    scheme: str = "http"


def start_targets(group: ProcessGroup, tools: Dict[str, str], work: Path, file_size: int) -> Tuple[int, Dict[str, int]]:
    """nginx (one worker) and one iperf3 server per path; returns their ports."""
    nginx_port, *iperf_ports = free_ports(1 + len(PATHS))
    root = work / "www"
    root.mkdir()
    (root / FILE_NAME).write_bytes(os.urandom(file_size))
    nginx_dir = work / "nginx"
    nginx_dir.mkdir()
    # The worker drops to an unprivileged user when started as root; the
    # temporary directory is private, so let it stay who it is.
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.getuid() == 0 else ""
    config = nginx_dir / "nginx.conf"
    config.write_text(textwrap.dedent(f"""\
            {user}
            daemon off;
            worker_processes 1;
            pid {nginx_dir}/nginx.pid;
            error_log {nginx_dir}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                sendfile on;
                tcp_nopush on;
                keepalive_requests 1000000;
                keepalive_timeout 60s;
                client_body_temp_path {nginx_dir}/body;
                proxy_temp_path {nginx_dir}/proxy;
                fastcgi_temp_path {nginx_dir}/fastcgi;
                uwsgi_temp_path {nginx_dir}/uwsgi;
                scgi_temp_path {nginx_dir}/scgi;
                default_type application/octet-stream;
                server {{
                    listen {LOOPBACK}:{nginx_port};
                    root {root};
                }}
            }}
            """))
    nginx = group.start(
        "nginx", [tools["nginx"], "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log"), "-c", str(config)]
    )
    waiting = [("nginx", nginx)]
    iperf_by_path: Dict[str, int] = {}
    for path, port in zip(PATHS, iperf_ports):
        name = f"iperf3-server-{path.split()[0]}"
        waiting.append((name, group.start(name, [tools["iperf3"], "-s", "-B", LOOPBACK, "-p", str(port)])))
        iperf_by_path[path] = port
    wait_until(
        "nginx and the iperf3 servers to listen",
        lambda: all(is_listening(p) for p in [nginx_port, *iperf_ports]),
        waiting,
        group,
    )
    return nginx_port, iperf_by_path


def gotaxy_env(source: Path) -> Dict[str, str]:
    """The environment that makes ``twistd`` import gotaxy from ``source``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    return env


def start_gotaxy_server(
    group: ProcessGroup, tools: Dict[str, str], name: str, directory: Path, env: Dict[str, str],
    control_port: int, options: Sequence[str], listening: Sequence[int] = (),
) -> Tuple[subprocess.Popen, Dict[str, str]]:
    """
    ``twistd gotaxy-server`` with ``options`` (a fresh data directory under
    ``directory``), once it has printed its first-start banner and listens
    on ``control_port`` and ``listening``; returns the process and the
    banner's client token and certificate fingerprint.
    """
    server = group.start(
        name,
        [
            tools["twistd"], "-n", "--pidfile=", "gotaxy-server",
            "--data-dir", str(directory / "server"),
            "--bind-addr", LOOPBACK,
            "--bind-port", str(control_port),
            *options,
        ],
        env=env,
        cwd=directory,
    )
    banner: Dict[str, str] = {}

    def banner_printed() -> bool:
        try:
            text = group.log_path(name).read_text(errors="replace")
        except OSError:
            return False
        for line in text.splitlines():
            if "client token" in line:
                banner["token"] = line.split()[-1]
            elif "server certificate" in line:
                banner["fingerprint"] = line.split()[-1]
        return len(banner) == 2 and all(is_listening(port) for port in (control_port, *listening))

    wait_until(f"the {name}'s first-start banner", banner_printed, [(name, server)], group)
    return server, banner


def start_gotaxy_client(
    group: ProcessGroup, tools: Dict[str, str], name: str, directory: Path, env: Dict[str, str],
    control_port: int, banner: Dict[str, str], options: Sequence[str], tunnels: Sequence[str],
    server: Tuple[str, subprocess.Popen],
) -> subprocess.Popen:
    """``twistd gotaxy-client`` logged in to the server of ``banner``, once each of ``tunnels`` is up."""
    client = group.start(
        name,
        [
            tools["twistd"], "-n", "--pidfile=", "gotaxy-client",
            "--server", f"{LOOPBACK}:{control_port}",
            "--token", banner["token"],
            "--fingerprint", banner["fingerprint"],
            "--data-dir", str(directory / "client"),
            *options,
        ],
        env=env,
        cwd=directory,
    )

    def tunnels_up() -> bool:
        text = group.log_path(name).read_text(errors="replace")
        return all(f"tunnel {tunnel} up at" in text for tunnel in tunnels)

    wait_until(f"the {name}'s tunnels to come up ({', '.join(tunnels)})", tunnels_up, [server, (name, client)], group)
    return client


def start_gotaxy(
    group: ProcessGroup, tools: Dict[str, str], work: Path, source: Path, nginx_port: int, iperf_port: int,
    udp_iperf: Optional[Tuple[int, int]] = None,
) -> PathEndpoints:
    """
    The gotaxy server and client with the HTTP and iperf3 tunnels; with
    ``udp_iperf`` = (local iperf3 port, public port), also a udp tunnel and a
    tcp one (iperf3's control connection) on that public port number.
    """
    control_port, web_port, iperf_public, panel_port, console_port = free_ports(5)
    extra_ports = f",{udp_iperf[1]}" if udp_iperf else ""
    tunnels = {"web": f"tcp:{LOOPBACK}:{nginx_port}:{web_port}", "iperf": f"tcp:{LOOPBACK}:{iperf_port}:{iperf_public}"}
    if udp_iperf:
        local, public = udp_iperf
        tunnels["iperfudp"] = f"udp:{LOOPBACK}:{local}:{public}"
        tunnels["iperfctl"] = f"tcp:{LOOPBACK}:{local}:{public}"
    directory = work / "gotaxy"
    directory.mkdir()
    env = gotaxy_env(source)
    # The web panel and the SSH console stay on, as in a default deployment,
    # but on ephemeral loopback ports rather than 7500 and 7022, which another
    # server on this machine may hold.
    services = []
    server_help = subprocess.run(
        [tools["twistd"], "gotaxy-server", "--help"], capture_output=True, text=True, env=env, cwd=directory, timeout=60
    ).stdout
    if "--web-port" in server_help:
        services += ["--web-port", str(panel_port)]
    if "--console-port" in server_help:
        services += ["--console-port", str(console_port)]
    server, banner = start_gotaxy_server(
        group, tools, "gotaxy-server", directory, env, control_port,
        ["--allow-ports", f"{web_port},{iperf_public}{extra_ports}", *services],
    )
    client = start_gotaxy_client(
        group, tools, "gotaxy-client", directory, env, control_port, banner,
        [arg for name, spec in tunnels.items() for arg in ("--tunnel", f"{name}={spec}")], list(tunnels),
        ("gotaxy-server", server),
    )
    return PathEndpoints(
        GOTAXY,
        http_port=web_port,
        iperf_port=iperf_public,
        carriers={"server": server.pid, "client": client.pid},
        names={"server": "gotaxy-server", "client": "gotaxy-client"},
        description=f"TLS {tls_description(control_port)}",
    )


def tls_description(port: int) -> str:
    """Protocol and cipher the gotaxy server picks for a default OpenSSL client."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                cipher = tls.cipher()
                return f"{tls.version()} {cipher[0] if cipher else '?'}"
    except (OSError, ssl.SSLError) as e:
        return f"(cipher unknown: {e})"


def start_ssh(
    group: ProcessGroup, tools: Dict[str, str], work: Path, nginx_port: int, iperf_port: int
) -> PathEndpoints:
    sshd_port, web_port, iperf_public = free_ports(3)
    directory = work / "ssh"
    directory.mkdir(mode=0o700)
    host_key, user_key = directory / "host_ed25519", directory / "id_ed25519"
    for key in (host_key, user_key):
        subprocess.run(
            [tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, stdin=subprocess.DEVNULL
        )
    shutil.copy(f"{user_key}.pub", directory / "authorized_keys")
    config = directory / "sshd_config"
    config.write_text(textwrap.dedent(f"""\
            ListenAddress {LOOPBACK}
            Port {sshd_port}
            HostKey {host_key}
            PermitRootLogin prohibit-password
            AuthorizedKeysFile {directory}/authorized_keys
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            StrictModes no
            UsePAM no
            AllowTcpForwarding yes
            GatewayPorts no
            PidFile none
            """))
    if os.getuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    sshd = group.start("sshd", [tools["sshd"], "-D", "-e", "-f", str(config)])
    wait_until("sshd to listen", lambda: is_listening(sshd_port), [("sshd", sshd)], group)
    user = pwd.getpwuid(os.getuid()).pw_name
    # -F /dev/null: no ~/.ssh/config, so the defaults (cipher included) are OpenSSH's own.
    common = [
        "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-i", str(user_key),
        "-p", str(sshd_port),
    ]
    cipher = ssh_cipher(tools["ssh"], common, user)
    client = group.start(
        "ssh-client",
        [
            tools["ssh"], "-N", *common,
            "-o", "LogLevel=ERROR",
            "-o", "ExitOnForwardFailure=yes",
            "-R", f"{LOOPBACK}:{web_port}:{LOOPBACK}:{nginx_port}",
            "-R", f"{LOOPBACK}:{iperf_public}:{LOOPBACK}:{iperf_port}",
            f"{user}@{LOOPBACK}",
        ],
    )
    wait_until(
        "ssh -R to forward both ports",
        lambda: is_listening(web_port) and is_listening(iperf_public),
        [("sshd", sshd), ("ssh-client", client)],
        group,
    )
    session = sshd_session(sshd.pid)
    group.strays["sshd"] = descendants_of(sshd.pid)
    return PathEndpoints(
        SSH,
        http_port=web_port,
        iperf_port=iperf_public,
        carriers={"server": session, "client": client.pid},
        names={"server": "sshd session", "client": "ssh-client"},
        description=cipher,
    )


def ssh_cipher(ssh: str, common: List[str], user: str) -> str:
    """The cipher ssh negotiates with this sshd, from a separate ``ssh -v ... true``."""
    try:
        done = subprocess.run(
            [ssh, *common, "-v", f"{user}@{LOOPBACK}", "true"],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "cipher unknown"
    match = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", done.stderr)
    if not match:
        return "cipher unknown"
    mac = "" if match.group(2) == "<implicit>" else f" + {match.group(2)}"
    return f"{match.group(1)}{mac}"


def sshd_session(sshd_pid: int) -> int:
    """
    The process that serves the forwarding session.

    With privilege separation that is the unprivileged child, ``sshd:
    USER@notty``; a root login without PAM runs the whole session in one
    process, ``sshd: root``.  Either way it is the leaf under the listener.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sessions = descendants_of(sshd_pid)
        for pid in sessions:
            if "@notty" in cmdline(pid):
                return pid
        leaves = [pid for pid in sessions if not children_of(pid)]
        if leaves:
            return leaves[-1]
        time.sleep(0.1)
    raise BenchmarkError("could not find sshd's session process under the sshd listener")


def check_paths(endpoints: Dict[str, PathEndpoints], expected: bytes) -> None:
    """One GET of the file through every path before measuring anything."""
    for path, ends in endpoints.items():
        connection = http.client.HTTPConnection(LOOPBACK, ends.http_port, timeout=10)
        try:
            connection.request("GET", f"/{FILE_NAME}")
            response = connection.getresponse()
            body = response.read()
        except OSError as e:
            raise BenchmarkError(f"GET /{FILE_NAME} through {path} (port {ends.http_port}) failed: {e}") from None
        finally:
            connection.close()
        if response.status != 200 or body != expected:
            raise BenchmarkError(
                f"GET /{FILE_NAME} through {path} returned status {response.status} and {len(body)} bytes, not the file"
            )


# --- workloads ---------------------------------------------------------------


@attrs.frozen
class Measurement:
    """One run of one workload on one path."""

    value: Optional[float]  # None when the run failed outright
    problems: str = ""  # errors the tool reported, shown next to the figure
    cpu: Dict[str, float] = attrs.field(factory=dict)  # role -> CPU seconds per second
    memory: Dict[str, Optional[Memory]] = attrs.field(factory=dict)  # role -> right after the run
    foreign: float = 0.0  # cores' worth of CPU other processes on the machine used meanwhile
    steal: float = 0.0  # cores' worth of CPU the hypervisor took meanwhile
    detail: str = ""  # e.g. wrk's mean latency, shown in the progress lines


@attrs.frozen
class Workload:
    key: str
    label: str
    unit: str
    #: (tools, endpoints, duration) -> (figure or None, problems, detail)
    run: Callable[[Dict[str, str], PathEndpoints, float], Tuple[Optional[float], str, str]]


def run_iperf3(
    tools: Dict[str, str], ends: PathEndpoints, duration: float, reverse: bool
) -> Tuple[Optional[float], str, str]:
    import json

    argv = [
        tools["iperf3"],
        "-c",
        LOOPBACK,
        "-p",
        str(ends.iperf_port),
        "-t",
        f"{duration:g}",
        "-J",
        "--connect-timeout",
        "5000",
    ]
    if reverse:
        argv.append("-R")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True)
    except subprocess.TimeoutExpired:
        return None, f"iperf3 did not finish within {duration + 30:g} s", ""
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return None, f"iperf3 exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}", ""
    if "error" in report:
        return None, f"iperf3: {report['error']}", ""
    end = report["end"]
    received = end["sum_received"]["bits_per_second"]
    retransmits = end.get("sum_sent", {}).get("retransmits")
    return received / 1e9, "", f"sender retransmits {retransmits}" if retransmits is not None else ""


WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_LATENCY = re.compile(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)")
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def run_wrk(
    tools: Dict[str, str], ends: PathEndpoints, duration: float, connections: int, threads: int, new_connection: bool
) -> Tuple[Optional[float], str, str]:
    argv = [tools["wrk"], f"-t{threads}", f"-c{connections}", f"-d{duration:g}s"]
    if ends.host:
        argv += ["-H", f"Host: {ends.host}"]
    if new_connection:
        argv += ["-H", "Connection: close"]
    argv.append(f"{ends.scheme}://{TLS_NAME if ends.scheme == 'https' else LOOPBACK}:{ends.http_port}/{FILE_NAME}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True)
    except subprocess.TimeoutExpired:
        return None, f"wrk did not finish within {duration + 30:g} s", ""
    rate = WRK_RATE.search(done.stdout)
    if rate is None:
        return None, f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}", ""
    problems = []
    socket_errors = WRK_SOCKET_ERRORS.search(done.stdout)
    if socket_errors:
        for kind, count in zip(("connect", "read", "write", "timeout"), socket_errors.groups()):
            if int(count):
                problems.append(f"{count} {kind} errors")
    non_2xx = WRK_NON_2XX.search(done.stdout)
    if non_2xx:
        problems.append(f"{non_2xx.group(1)} non-2xx")
    latency = WRK_LATENCY.search(done.stdout)
    detail = f"latency mean {latency.group(1)}, stdev {latency.group(2)}, max {latency.group(3)}" if latency else ""
    return float(rate.group(1)), ", ".join(problems), detail


def workloads(connections: int, threads: int, reverse: bool) -> List[Workload]:
    http = functools.partial(run_wrk, connections=connections, threads=threads)
    upload = functools.partial(run_iperf3, reverse=False)
    chosen = [Workload("up", "iperf3 1 stream, public→service", "Gbit/s", upload)]
    if reverse:
        download = functools.partial(run_iperf3, reverse=True)
        chosen.append(Workload("down", "iperf3 1 stream, service→public (-R)", "Gbit/s", download))
    chosen += [
        Workload(
            "keepalive", f"HTTP keep-alive, {connections} conns", "req/s", functools.partial(http, new_connection=False)
        ),
        Workload(
            "close",
            f"HTTP new conn per request, {connections} conns",
            "req/s",
            functools.partial(http, new_connection=True),
        ),
    ]
    return chosen


def measure(
    workload: Workload, tools: Dict[str, str], ends: PathEndpoints, duration: float, group: ProcessGroup
) -> Measurement:
    gone = [ends.names[role] for role, pid in ends.carriers.items() if not is_running(pid)]
    if gone:
        return Measurement(None, f"not run: {', '.join(gone)} no longer running")
    before = {role: cpu_seconds(pid) for role, pid in ends.carriers.items()}
    machine_before = machine_cpu(group)
    started = time.monotonic()
    value, problems, detail = workload.run(tools, ends, duration)
    elapsed = time.monotonic() - started
    machine_after = machine_cpu(group)
    foreign = machine_after.foreign_since(machine_before) / elapsed
    steal = (machine_after.steal - machine_before.steal) / elapsed
    cpu = {role: (cpu_seconds(pid) - before[role]) / elapsed for role, pid in ends.carriers.items()}
    died = [ends.names[role] for role, pid in ends.carriers.items() if not is_running(pid)]
    if died:
        problems = "; ".join(filter(None, [problems, f"{', '.join(died)} exited during the run"]))
        cpu = {}
    memory = {role: memory_of(pid) for role, pid in ends.carriers.items()}
    return Measurement(value, problems, cpu, memory=memory, foreign=foreign, steal=steal, detail=detail)


def measure_quietly(
    workload: Workload,
    tools: Dict[str, str],
    ends: PathEndpoints,
    args: argparse.Namespace,
    group: ProcessGroup,
    tag: str,
) -> Measurement:
    """
    Measure, and measure again (up to ``args.attempts`` times in all) while
    other processes on the machine took more than ``args.busy`` cores meanwhile;
    keep the quietest attempt.
    """
    attempts: List[Measurement] = []
    while True:
        result = measure(workload, tools, ends, args.duration, group)
        attempts.append(result)
        show_progress(tag, workload, ends, result)
        # Let TIME_WAIT sockets and buffers settle between runs.
        time.sleep(1)
        if result.foreign <= args.busy or len(attempts) >= args.attempts:
            break
        progress(
            f"{' ' * len(tag)} other processes were busy ({result.foreign * 100:.0f} % of a core); measuring again"
        )
    return min(attempts, key=lambda m: m.foreign)


def show_progress(tag: str, workload: Workload, ends: PathEndpoints, result: Measurement) -> None:
    shown = format_value(result.value, workload.unit)
    cpu = ", ".join(f"{role} {share * 100:.0f} %" for role, share in result.cpu.items())
    rss = ", ".join(
        f"{role} {m.rss_kib / 1024:.0f}/{m.hwm_kib / 1024:.0f} MiB" for role, m in result.memory.items() if m
    )
    progress(
        f"{tag} {workload.label:<38} {ends.path:<7} {shown:>8} {workload.unit:<6}"
        + (f" | CPU {cpu}" if cpu else "")
        + (f" | RSS/HWM {rss}" if rss else "")
        + (f" | {result.detail}" if result.detail else "")
        + f" | others {result.foreign * 100:.0f} %, steal {result.steal * 100:.0f} %"
        + (f" | !! {result.problems}" if result.problems else "")
    )


# --- the report --------------------------------------------------------------


@attrs.frozen
class Summary:
    """The runs of one workload on one path, reduced to one cell."""

    value: Optional[float]
    problems: str
    cpu: Dict[str, float]
    low: Optional[float] = None  # over the repeats
    high: Optional[float] = None
    foreign: float = 0.0  # median over the runs, cores


def summarize(runs: List[Measurement]) -> Summary:
    values = [r.value for r in runs if r.value is not None]
    problems = "; ".join(sorted({r.problems for r in runs if r.problems}))
    failed = len(runs) - len(values)
    if failed:
        problems = "; ".join(filter(None, [f"{failed} of {len(runs)} runs failed", problems]))
    value = statistics.median(values) if values else None
    roles = sorted({role for r in runs for role in r.cpu})
    cpu = {role: statistics.median([r.cpu[role] for r in runs if role in r.cpu]) for role in roles}
    foreign = statistics.median([r.foreign for r in runs])
    return Summary(value, problems, cpu, min(values, default=None), max(values, default=None), foreign)


def format_value(value: Optional[float], unit: str) -> str:
    if value is None:
        return "failed"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "—"
    return f"{numerator / denominator:.2f}"


def cell(summary: Summary, unit: str, notes: List[str]) -> str:
    """The figure; problems go to a numbered note so that they cannot be missed."""
    text = format_value(summary.value, unit)
    if summary.problems:
        notes.append(summary.problems)
        text += f" [!{len(notes)}]"
    return text


def render(headers: List[str], rows: List[List[str]], markdown: bool) -> str:
    if markdown:
        lines = [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


#: Issue 15's goals for the ratios in the main table: workload key -> the least gotaxy / ssh -R.
RATIO_GOALS = {"up": 1.2, "down": 1.2, "close": 1.2}
#: Issue 15's memory goals (MiB, at most) for gotaxy's rows: (role, row label) -> limit.
MEMORY_GOALS = {
    ("server", "RSS before load, VmRSS"): 60.0,
    ("server", "peak RSS before load, VmHWM"): 80.0,
    ("server", "peak RSS after load, VmHWM"): 80.0,
    ("client", "RSS before load, VmRSS"): 30.0,
}


def ratio_goal(key: str, gotaxy: Optional[float], ssh: Optional[float]) -> str:
    """The goal column of a workload row: whether gotaxy / ssh -R reaches the goal, if it has one."""
    goal = RATIO_GOALS.get(key)
    if goal is None:
        return "—"
    if gotaxy is None or not ssh:
        return f"≥ {goal:.2f}: cannot tell"
    return f"≥ {goal:.2f}: {'met' if gotaxy / ssh >= goal else 'NOT met'}"


def memory_goal(role: str, label: str, gotaxy_mib: Optional[float]) -> str:
    """The goal column of a memory row: whether gotaxy's figure is within the limit, if it has one."""
    limit = MEMORY_GOALS.get((role, label))
    if limit is None:
        return "—"
    if gotaxy_mib is None:
        return f"≤ {limit:.0f} MiB: cannot tell"
    return f"≤ {limit:.0f} MiB: {'met' if gotaxy_mib <= limit else 'NOT met'}"


def cpu_cost_rows(chosen: List[Workload], results: Dict[Tuple[str, str], Summary]) -> List[List[str]]:
    """
    What each end of each path spends per unit carried: CPU seconds per
    gigabit for the throughput workloads, CPU microseconds per request for
    the HTTP ones; the median CPU share (CPU s per s, from /proc) over the
    median figure.  It moves far less with other load on the machine than
    Gbit/s or req/s do, and it shows work moved from one end to the other.
    """
    per = {"Gbit/s": ("CPU s/Gbit", 1.0, 3), "req/s": ("CPU µs/request", 1e6, 0)}
    rows = []
    for workload in chosen:
        if workload.unit not in per:
            continue
        unit, scale, digits = per[workload.unit]
        for role in ("server", "client"):
            gotaxy, ssh = (
                summary.cpu[role] / summary.value * scale if summary.value and role in summary.cpu else None
                for summary in (results[(workload.key, GOTAXY)], results[(workload.key, SSH)])
            )
            rows.append([
                f"{role} CPU, {workload.label} ({unit})",
                "—",
                "—" if gotaxy is None else f"{gotaxy:,.{digits}f}",
                "—" if ssh is None else f"{ssh:,.{digits}f}",
                format_ratio(gotaxy, ssh),
                "—",
                "—",
            ])
    return rows


def report(
    chosen: List[Workload],
    results: Dict[Tuple[str, str], Summary],
    memory: Dict[str, Dict[str, Tuple[Optional[Memory], Optional[Memory]]]],
    markdown: bool,
) -> str:
    headers = ["workload", DIRECT, GOTAXY, SSH, "gotaxy / ssh -R", "gotaxy / direct", "goal (issue 15)"]
    rows = []
    notes: List[str] = []
    for workload in chosen:
        direct, gotaxy, ssh = (results[(workload.key, path)] for path in PATHS)
        rows.append(
            [
                f"{workload.label} ({workload.unit})",
                cell(direct, workload.unit, notes),
                cell(gotaxy, workload.unit, notes),
                cell(ssh, workload.unit, notes),
                format_ratio(gotaxy.value, ssh.value),
                format_ratio(gotaxy.value, direct.value),
                ratio_goal(workload.key, gotaxy.value, ssh.value),
            ]
        )
    rows += cpu_cost_rows(chosen, results)
    memory_rows = [
        ("RSS before load, VmRSS", 0, "rss_kib"),
        ("RSS after load, VmRSS", 1, "rss_kib"),
        ("peak RSS before load, VmHWM", 0, "hwm_kib"),
        ("peak RSS after load, VmHWM", 1, "hwm_kib"),
    ]
    for role in ("server", "client"):
        for label, moment, field in memory_rows:
            gotaxy_mib, ssh_mib = (
                getattr(m, field) / 1024 if (m := memory[path][role][moment]) else None for path in (GOTAXY, SSH)
            )
            rows.append(
                [
                    f"{role} {label} (MiB)",
                    "—",
                    format_value(gotaxy_mib, "MiB"),
                    format_value(ssh_mib, "MiB"),
                    format_ratio(gotaxy_mib, ssh_mib),
                    "—",
                    memory_goal(role, label, gotaxy_mib),
                ]
            )
    main = render(headers, rows, markdown)
    if notes:
        main += "\n\n" + "\n".join(f"[!{number}] {note}" for number, note in enumerate(notes, 1))

    cpu_headers = [
        "workload",
        "gotaxy server",
        "gotaxy client",
        "sshd session",
        "ssh client",
        "others (gotaxy runs)",
        "others (ssh -R runs)",
    ]
    cpu_rows = []
    for workload in chosen:
        gotaxy, ssh = results[(workload.key, GOTAXY)], results[(workload.key, SSH)]
        cpu_rows.append(
            [
                workload.label,
                *(f"{gotaxy.cpu.get(role, float('nan')) * 100:.0f} %" for role in ("server", "client")),
                *(f"{ssh.cpu.get(role, float('nan')) * 100:.0f} %" for role in ("server", "client")),
                f"{gotaxy.foreign * 100:.0f} %",
                f"{ssh.foreign * 100:.0f} %",
            ]
        )
    cpu = render(cpu_headers, cpu_rows, markdown)
    bullet = "- " if markdown else "  "
    spreads = [
        f"{bullet}{workload.label}, {path}: "
        f"{format_value(summary.low, workload.unit)} – {format_value(summary.high, workload.unit)} {workload.unit}"
        for workload in chosen
        for path in PATHS
        if (summary := results[(workload.key, path)]).low != summary.high
    ]
    parts = [
        main,
        "",
        "CPU use while each workload ran (100 % = one core; median over the repeats). "
        "'others' is CPU taken meanwhile by processes this script did not start:",
        "",
        cpu,
    ]
    if spreads:
        parts += ["", "Range (min–max) over the repeats:", *spreads]
    return "\n".join(parts)


def verdict(chosen: List[Workload], results: Dict[Tuple[str, str], Summary]) -> str:
    lines = ["The bar (issue 15): gotaxy (TLS, panel and console on) at least 1.2x ssh -R on throughput "
             "both ways and on new-connection req/s."]
    for workload in chosen:
        goal = RATIO_GOALS.get(workload.key)
        if goal is None:
            continue
        gotaxy, ssh = results[(workload.key, GOTAXY)], results[(workload.key, SSH)]
        if gotaxy.value is None or ssh.value is None:
            outcome = "cannot tell (a run failed)"
        else:
            ratio = gotaxy.value / ssh.value
            outcome = f"{'met' if ratio >= goal else 'NOT met'} (gotaxy / ssh -R = {ratio:.2f})"
        if gotaxy.problems:
            outcome += f"; gotaxy reported errors: {gotaxy.problems}"
        lines.append(f"  {workload.label}: {outcome}")
    return "\n".join(lines)


# --- websites by name ----------------------------------------------------------


def start_nginx_proxy(group: ProcessGroup, tools: Dict[str, str], work: Path, nginx_port: int) -> PathEndpoints:
    """nginx (one worker) as a reverse proxy to the target nginx, keeping upstream connections alive."""
    (port,) = free_ports(1)
    directory = work / "nginx-proxy"
    directory.mkdir()
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.getuid() == 0 else ""
    config = directory / "nginx.conf"
    config.write_text(textwrap.dedent(f"""\
            {user}
            daemon off;
            worker_processes 1;
            pid {directory}/nginx.pid;
            error_log {directory}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                client_body_temp_path {directory}/body;
                proxy_temp_path {directory}/proxy;
                fastcgi_temp_path {directory}/fastcgi;
                uwsgi_temp_path {directory}/uwsgi;
                scgi_temp_path {directory}/scgi;
                upstream target {{ server {LOOPBACK}:{nginx_port}; keepalive 64; }}
                server {{
                    listen {LOOPBACK}:{port};
                    server_name {VHOST_NAME};
                    location / {{
                        proxy_pass http://target;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Host $host;
                        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    }}
                }}
            }}
            """))
    proxy = group.start(
        "nginx-proxy", [tools["nginx"], "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(config)]
    )
    wait_until("the reverse-proxy nginx to listen", lambda: is_listening(port), [("nginx-proxy", proxy)], group)
    # The worker does the work; the master only watches it.
    worker = next(iter(children_of(proxy.pid)), proxy.pid)
    return PathEndpoints(NGINX_PROXY, http_port=port, iperf_port=0, carriers={"proxy": worker},
                         names={"proxy": "nginx-proxy"}, description="nginx proxy_pass, upstream keepalive 64",
                         host=VHOST_NAME)


def start_gotaxy_http(
    group: ProcessGroup, tools: Dict[str, str], work: Path, source: Path, nginx_port: int
) -> List[PathEndpoints]:
    """
    A Gotaxy server with vhostHTTPPort and a client with one http tunnel to
    nginx: its plain path, and, when --source terminates TLS for http
    tunnels (gotaxy/tls/sites.py), its path over vhostHTTPSPort; none if
    --source has no http tunnels.
    """
    if not (source / "gotaxy" / "proxy" / "vhost.py").exists():
        return []
    tls = (source / "gotaxy" / "tls" / "sites.py").exists()
    control_port, web_port, tls_port = free_ports(3)
    directory = work / "gotaxy-http"
    directory.mkdir()
    env = gotaxy_env(source)
    server_config = directory / "server.toml"
    settings = f'vhostHTTPPort = {web_port}\n'
    if tls:
        certs = directory / "certs"
        certs.mkdir()
        made = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(certs / f"{TLS_NAME}.key"), "-out", str(certs / f"{TLS_NAME}.crt"), "-days", "2",
             "-subj", f"/CN={TLS_NAME}", "-addext", f"subjectAltName=DNS:{TLS_NAME}"],
            capture_output=True, text=True, timeout=60,
        )
        if made.returncode != 0:
            raise BenchmarkError(f"openssl could not make the https path's certificate: {made.stderr.strip()[:200]}")
        settings += f'vhostHTTPSPort = {tls_port}\nvhostHTTPSCertDir = "{certs}"\n'
    server_config.write_text(settings)
    server, banner = start_gotaxy_server(
        group, tools, "gotaxy-http-server", directory, env, control_port,
        ["--config", str(server_config), "--web-port", "0", "--console-port", "0"],
        listening=[web_port, tls_port] if tls else [web_port],
    )
    client_config = directory / "client.toml"
    client_config.write_text(textwrap.dedent(f"""\
            [[proxies]]
            name = "web"
            type = "http"
            localIP = "{LOOPBACK}"
            localPort = {nginx_port}
            customDomains = ["{VHOST_NAME}", "{TLS_NAME}"]
            """))
    client = start_gotaxy_client(
        group, tools, "gotaxy-http-client", directory, env, control_port, banner,
        ["--config", str(client_config)], ["web"], ("gotaxy-http-server", server),
    )
    plain = PathEndpoints(GOTAXY_HTTP, http_port=web_port, iperf_port=0,
                          carriers={"server": server.pid, "client": client.pid},
                          names={"server": "gotaxy-http-server", "client": "gotaxy-http-client"},
                          description="vhostHTTPPort, one http tunnel", host=VHOST_NAME)
    if not tls:
        return [plain]
    return [plain, attrs.evolve(plain, path=GOTAXY_HTTPS, http_port=tls_port, scheme="https",
                                description="the same tunnel on vhostHTTPSPort, TLS terminated at the server "
                                            "(an operator's certificate)")]


def start_pagekite(group: ProcessGroup, tools: Dict[str, str], work: Path, nginx_port: int) -> PathEndpoints:
    """PageKite's front end on a port, and a back end that serves nginx as the kite web.bench.test."""
    (port,) = free_ports(1)
    secret = os.urandom(8).hex()
    directory = work / "pagekite"
    directory.mkdir()
    frontend = group.start(
        "pagekite-frontend",
        [tools["pagekite"], "--clean", "--nullui", "--isfrontend", f"--host={LOOPBACK}", f"--ports={port}",
         "--protos=http",
         f"--domain=http:{VHOST_NAME}:{secret}", f"--logfile={directory / 'frontend.log'}"],
        cwd=directory,
    )
    wait_until("PageKite's front end to listen", lambda: is_listening(port), [("pagekite-frontend", frontend)], group)
    backend = group.start(
        "pagekite-backend",
        [tools["pagekite"], "--clean", "--nullui", f"--frontend={LOOPBACK}:{port}",
         f"--service_on=http:{VHOST_NAME}:{LOOPBACK}:{nginx_port}:{secret}",
         f"--logfile={directory / 'backend.log'}"],
        cwd=directory,
    )

    def kite_up() -> bool:
        try:
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
            connection.request("GET", f"/{FILE_NAME}", headers={"Host": VHOST_NAME})
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    wait_until("the PageKite kite to come up", kite_up,
               [("pagekite-frontend", frontend), ("pagekite-backend", backend)], group)
    return PathEndpoints(PAGEKITE, http_port=port, iperf_port=0,
                         carriers={"frontend": frontend.pid, "backend": backend.pid},
                         names={"frontend": "pagekite-frontend", "backend": "pagekite-backend"},
                         description=f"PageKite {pagekite_version(directory / 'frontend.log')}, "
                                     "plain TCP between its ends", host=VHOST_NAME)


def pagekite_version(log: Path) -> str:
    """The version PageKite logs at start (``version=1.5.2.201011``); it has no --version."""
    try:
        found = re.search(r"version=([\w.]+)", log.read_text(errors="replace"))
    except OSError:
        return "(version unknown)"
    return found.group(1) if found else "(version unknown)"


def check_vhost_paths(endpoints: Dict[str, PathEndpoints], expected: bytes) -> None:
    """One GET by name through every websites path before measuring."""
    for path, ends in endpoints.items():
        if ends.scheme == "https":  # (the run's own certificate: nothing to verify it against)
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                TLS_NAME, ends.http_port, timeout=10, context=ssl._create_unverified_context())
        else:
            connection = http.client.HTTPConnection(LOOPBACK, ends.http_port, timeout=10)
        try:
            connection.request("GET", f"/{FILE_NAME}", headers={"Host": VHOST_NAME})
            response = connection.getresponse()
            body = response.read()
        except OSError as e:
            raise BenchmarkError(f"GET /{FILE_NAME} through {path} (port {ends.http_port}) failed: {e}") from None
        finally:
            connection.close()
        if response.status != 200 or body != expected:
            raise BenchmarkError(f"GET /{FILE_NAME} by name through {path} returned {response.status}, not the file")


def vhost_report(
    chosen: List[Workload], results: Dict[Tuple[str, str], Summary], tcp: Dict[Tuple[str, str], Summary],
    paths: Sequence[str], markdown: bool,
) -> str:
    headers = ["workload", *paths, "gotaxy http / pagekite", "gotaxy http / nginx proxy", "gotaxy http / gotaxy tcp",
               "gotaxy https / gotaxy http"]
    rows = []
    notes: List[str] = []
    for workload in chosen:
        cells = {path: results[(workload.key, path)] for path in paths}
        gotaxy = cells.get(GOTAXY_HTTP)
        value = gotaxy.value if gotaxy is not None else None
        rows.append([
            f"{workload.label} ({workload.unit})",
            *(cell(cells[path], workload.unit, notes) for path in paths),
            format_ratio(value, cells[PAGEKITE].value if PAGEKITE in cells else None),
            format_ratio(value, cells[NGINX_PROXY].value),
            format_ratio(value, tcp[(workload.key, GOTAXY)].value if (workload.key, GOTAXY) in tcp else None),
            format_ratio(cells[GOTAXY_HTTPS].value if GOTAXY_HTTPS in cells else None, value),
        ])
    text = render(headers, rows, markdown)
    if notes:
        text += "\n\n" + "\n".join(f"[!{number}] {note}" for number, note in enumerate(notes, 1))
    cpu_rows = [
        [workload.label, path, ", ".join(f"{role} {share * 100:.0f} %" for role, share in summary.cpu.items()) or "—"]
        for workload in chosen for path in paths if (summary := results[(workload.key, path)])
    ]
    return "\n".join([
        "Websites by name (Host: " + VHOST_NAME + "):", "", text, "",
        "CPU use of the processes that carry each websites path (100 % = one core):", "",
        render(["workload", "path", "CPU"], cpu_rows, markdown),
    ])


def vhost_verdict(chosen: List[Workload], results: Dict[Tuple[str, str], Summary],
                  tcp: Dict[Tuple[str, str], Summary], paths: Sequence[str]) -> str:
    lines = ["The bar for websites: gotaxy http at least 2x PageKite on both workloads, and keep-alive "
             "req/s at least 70 % of gotaxy's own TCP tunnel."]
    for workload in chosen:
        gotaxy = results.get((workload.key, GOTAXY_HTTP))
        if gotaxy is None or gotaxy.value is None:
            lines.append(f"  {workload.label}: cannot tell (the gotaxy http run failed or did not run)")
            continue
        if PAGEKITE in paths and results[(workload.key, PAGEKITE)].value:
            ratio = gotaxy.value / results[(workload.key, PAGEKITE)].value  # type: ignore[operator]
            lines.append(f"  {workload.label} vs PageKite: {'met' if ratio >= 2 else 'NOT met'} ({ratio:.2f}x)")
        own = tcp.get((workload.key, GOTAXY))
        if workload.key == "keepalive" and own is not None and own.value:
            ratio = gotaxy.value / own.value
            lines.append(f"  {workload.label} vs gotaxy tcp: {'met' if ratio >= 0.7 else 'NOT met'} ({ratio:.2f})")
    return "\n".join(lines)


# --- UDP ---------------------------------------------------------------------

UDP_PATHS = (DIRECT, "socat", GOTAXY)
UDP_DATAGRAM = 1200
#: Offered rates, Mbit/s, stepped up until a path loses 1 % or more.
UDP_RATES = (10, 25, 50, 75, 100, 125, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1500, 2000)
UDP_LOSS_LIMIT = 1.0


@attrs.frozen
class UdpStep:
    rate: float  #: offered (iperf3 -b), Mbit/s
    received: Optional[float]  #: Mbit/s that arrived, None when the run failed
    loss: Optional[float]  #: percent
    jitter: Optional[float] = None  #: ms
    problems: str = ""
    #: Mbit/s iperf3 really sent: on a busy machine it may fall short of ``rate``, and a step that
    #: passes is then worth what was sent, not what was asked for
    sent: Optional[float] = None
    pps: Optional[float] = None  #: datagrams a second that arrived


def start_udp_targets(group: ProcessGroup, tools: Dict[str, str]) -> Dict[str, int]:
    """One iperf3 server per UDP path (direct, socat, gotaxy); their local ports."""
    ports = free_ports(len(UDP_PATHS))
    waiting = []
    for path, port in zip(UDP_PATHS, ports):
        name = f"iperf3-udp-server-{path}"
        waiting.append((name, group.start(name, [tools["iperf3"], "-s", "-B", LOOPBACK, "-p", str(port)])))
    wait_until("the UDP iperf3 servers to listen", lambda: all(is_listening(p) for p in ports), waiting, group)
    return dict(zip(UDP_PATHS, ports))


def start_socat(group: ProcessGroup, tools: Dict[str, str], target: int) -> int:
    """A plain one-hop relay to ``target``: UDP (the datagrams) and TCP (iperf3's control) on one port."""
    (port,) = free_ports(1)
    udp = group.start("socat-udp", [tools["socat"], f"UDP4-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr",
                                    f"UDP4:{LOOPBACK}:{target}"])
    tcp = group.start("socat-tcp", [tools["socat"], f"TCP4-LISTEN:{port},bind={LOOPBACK},fork,reuseaddr",
                                    f"TCP4:{LOOPBACK}:{target}"])
    wait_until("socat to listen", lambda: is_listening(port), [("socat-udp", udp), ("socat-tcp", tcp)], group)
    return port


def run_iperf3_udp(tools: Dict[str, str], port: int, rate: float, duration: float) -> UdpStep:
    import json

    argv = [tools["iperf3"], "-c", LOOPBACK, "-p", str(port), "-u", "-b", f"{rate:g}M", "-l", str(UDP_DATAGRAM),
            "-t", f"{duration:g}", "-J", "--connect-timeout", "5000"]
    deadline = time.monotonic() + 20
    while True:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True)
        except subprocess.TimeoutExpired:
            return UdpStep(rate, None, None, problems=f"iperf3 did not finish within {duration + 30:g} s")
        try:
            report = json.loads(done.stdout)
        except ValueError:
            return UdpStep(rate, None, None, problems=f"iperf3 exited {done.returncode}")
        # The server may still be closing the previous test's control connection.
        if "busy" in report.get("error", "") and time.monotonic() < deadline:
            time.sleep(0.5)
            continue
        break
    if "error" in report:
        return UdpStep(rate, None, None, problems=f"iperf3: {report['error']}")
    end = report["end"]
    total = end["sum"]
    sent_sum, received_sum = end.get("sum_sent"), end.get("sum_received")
    if sent_sum is None or received_sum is None:  # iperf3 before 3.9 has only "sum", the sender's view
        sent = total["bits_per_second"] / 1e6
        received = sent * (1 - total["lost_percent"] / 100)
        pps = total["packets"] * (1 - total["lost_percent"] / 100) / max(total["seconds"], 1e-9)
    else:
        sent = sent_sum["bits_per_second"] / 1e6
        received = received_sum["bits_per_second"] / 1e6
        pps = received_sum["packets"] / max(received_sum["seconds"], 1e-9)
    problems = f"iperf3 sent only {sent:.0f} Mbit/s" if sent < 0.9 * rate else ""
    return UdpStep(rate, received, total["lost_percent"], total.get("jitter_ms"), problems, sent, pps)


#: Halvings of the gap between a path's last passing and first failing rung of ``UDP_RATES`` (the rungs
#: double at the low end, so without them one rung can halve a ratio).
UDP_REFINE = 2


def measure_udp(tools: Dict[str, str], ports: Dict[str, int], duration: float) -> Dict[str, List[UdpStep]]:
    """
    Step the rate up on every path in turn until each loses 1 % or more (or
    the ladder ends), then narrow each path's gap between its last passing
    and first failing rate by ``UDP_REFINE`` halvings, the paths in turn.
    """
    steps: Dict[str, List[UdpStep]] = {path: [] for path in ports}

    def run(path: str, rate: float) -> bool:
        step = run_iperf3_udp(tools, ports[path], rate, duration)
        steps[path].append(step)
        shown = "failed" if step.loss is None else f"loss {step.loss:.2f} %, jitter {step.jitter or 0:.3f} ms"
        progress(f"[udp] {rate:>6g} Mbit/s offered  {path:<7} {shown}" + (f" | !! {step.problems}"
                                                                           if step.problems else ""))
        time.sleep(1)
        return step.loss is not None and step.loss < UDP_LOSS_LIMIT

    going = list(ports)
    gaps: Dict[str, Tuple[float, float]] = {}
    for rate in UDP_RATES:
        for path in list(going):
            if not run(path, rate):
                going.remove(path)
                passed = [s.rate for s in steps[path] if s.loss is not None and s.loss < UDP_LOSS_LIMIT]
                gaps[path] = (max(passed, default=0.0), rate)
        if not going:
            break
    for _ in range(UDP_REFINE):
        for path, (low, high) in list(gaps.items()):
            middle = round((low + high) / 2)
            if middle in (low, high):
                continue
            gaps[path] = (middle, high) if run(path, middle) else (low, middle)
    return steps


def best_udp(steps: List[UdpStep]) -> Optional[UdpStep]:
    passed = [s for s in steps if s.loss is not None and s.loss < UDP_LOSS_LIMIT]
    return max(passed, key=lambda s: s.received or 0.0) if passed else None


def udp_report(steps: Dict[str, List[UdpStep]], markdown: bool) -> str:
    socat = best_udp(steps.get("socat", []))
    headers = ["path", "highest rate under 1 % loss", "datagrams/s", "loss there", "jitter there", "vs socat",
               "offered there"]
    rows = []
    for path, path_steps in steps.items():
        best = best_udp(path_steps)
        if best is None:
            rows.append([path, "none passed", "–", "–", "–", "–", "–"])
            continue
        # What arrived, not what iperf3 was asked to send: a busy machine's iperf3 may send less.
        ratio = f"{best.received / socat.received:.2f}" if socat is not None and socat.received else "–"
        rows.append([path, f"{best.received:.0f} Mbit/s", f"{best.pps or 0:,.0f}", f"{best.loss:.2f} %",
                     f"{best.jitter:.3f} ms" if best.jitter is not None else "–", ratio, f"{best.rate:g} Mbit/s"])
    return render(headers, rows, markdown)


#: The flood offered to a udp tunnel, as a multiple of the highest rate it passed under 1 % loss in the same
#: run (so beyond its capacity, without the flooder itself taking a core of a small machine), in Mbit/s bounds.
FLOOD_FACTOR = 4
FLOOD_MIN, FLOOD_MAX = 400.0, 2000.0
#: The goal: TCP on the same client keeps at least this much of its throughput during the flood.
FLOOD_GOAL = 0.8


@attrs.frozen
class FloodResult:
    path: str
    flood: float  #: Mbit/s offered
    alone: Optional[float]  #: Gbit/s
    during: Optional[float]  #: Gbit/s
    problems: str = ""


def flood_rate(steps: Dict[str, List[UdpStep]]) -> float:
    """Mbit/s to flood with: ``FLOOD_FACTOR`` times gotaxy's best UDP rate of this run, within the bounds."""
    best = best_udp(steps.get(GOTAXY, []))
    return FLOOD_MAX if best is None else min(max(FLOOD_FACTOR * (best.received or 0.0), FLOOD_MIN), FLOOD_MAX)


def iperf3_tcp(tools: Dict[str, str], port: int, duration: float) -> Tuple[Optional[float], str]:
    """One iperf3 TCP stream to ``port`` for ``duration`` s: (Gbit/s received, problems)."""
    import json

    argv = [tools["iperf3"], "-c", LOOPBACK, "-p", str(port), "-t", f"{duration:g}", "-J", "--connect-timeout", "5000"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, start_new_session=True)
        report = json.loads(done.stdout)
    except (subprocess.TimeoutExpired, ValueError):
        return None, "iperf3 (tcp) failed"
    if "error" in report:
        return None, f"iperf3 (tcp): {report['error']}"
    return report["end"]["sum_received"]["bits_per_second"] / 1e9, ""


def start_flood(tools: Dict[str, str], udp_port: int, flood: float, seconds: float,
                report: bool = False) -> subprocess.Popen:
    """
    ``iperf3 -u -l 1200 -b FLOOD`` to ``udp_port`` for ``seconds``, in the
    background; stop it with ``stop_flood``, or with ``report`` let it end
    and read its JSON report (``flood_passed``).
    """
    return subprocess.Popen(
        [tools["iperf3"], "-c", LOOPBACK, "-p", str(udp_port), "-u", "-b", f"{flood:g}M", "-l", str(UDP_DATAGRAM),
         "-t", f"{seconds:g}", "--connect-timeout", "5000", *(["-J", "--get-server-output"] if report else [])],
        stdout=subprocess.PIPE if report else subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )


def flood_passed(flooding: subprocess.Popen, timeout: float, first: int = 0,
                 last: Optional[int] = None) -> Optional[Tuple[float, float]]:
    """
    A ``report`` flood's end: (datagrams/s sent, datagrams/s that reached
    the iperf3 server), over its seconds ``first`` to ``last`` (the server's
    one-second intervals); None: no report.
    """
    import json

    try:
        out, _ = flooding.communicate(timeout=timeout)
        report = json.loads(out)
        sent = report["end"]["sum_sent"]
        # The server's text (it runs without -J): "[  5]   1.00-2.00   sec ... 0.009 ms  120/1041 (12%)".
        # iperf3 counts a UDP interval's datagrams by sequence number: those that arrived are total - lost.
        intervals = [(float(a), float(b), int(total) - int(lost)) for a, b, lost, total in re.findall(
            r"^\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s.*?\s(\d+)/(\d+)\s", report["server_output_text"], re.M)]
        # The intervals, not the summary line (which spans the whole run).
        intervals = [i for i in intervals if i[1] - i[0] <= 1.5][first:last]
        seconds = sum(b - a for a, b, _ in intervals)
        return sent["packets"] / max(sent["seconds"], 1e-9), sum(n for _, _, n in intervals) / max(seconds, 1e-9)
    except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        stop_flood(flooding)
        return None


def stop_flood(flooding: subprocess.Popen) -> None:
    flooding.terminate()
    try:
        flooding.wait(10)
    except subprocess.TimeoutExpired:
        flooding.kill()
        flooding.wait(10)


def tcp_under_udp_flood(tools: Dict[str, str], tcp_port: int, udp_port: int, duration: float,
                        flood: float = FLOOD_MAX) -> Tuple[Optional[float], Optional[float], str]:
    """
    One iperf3 TCP stream to ``tcp_port``, alone and then while ``iperf3 -u
    -b FLOOD`` floods ``udp_port``: (Gbit/s alone, Gbit/s during, problems).
    """
    alone, problems = iperf3_tcp(tools, tcp_port, duration)
    time.sleep(1)
    flooding = start_flood(tools, udp_port, flood, duration + 4)
    try:
        time.sleep(1)  # the flood is under way
        during, more = iperf3_tcp(tools, tcp_port, duration)
    finally:
        stop_flood(flooding)
    return alone, during, "; ".join(filter(None, [problems, more]))


#: The flood row's control: gotaxy's TCP while the flood goes to the direct iperf3 server.
FLOOD_ELSEWHERE = "gotaxy, flood to direct"


def measure_flood(tools: Dict[str, str], tcp_ports: Dict[str, int], udp_ports: Dict[str, int], duration: float,
                  steps: Dict[str, List[UdpStep]]) -> List[FloodResult]:
    """
    TCP alone vs TCP during a UDP flood, direct (the flood to the direct
    iperf3 server: what the flood itself costs the machine) and through
    gotaxy (the flood to the udp tunnel of the client that carries the tcp
    tunnel), the same flood for both; then gotaxy's TCP again while the
    same flood goes to the direct iperf3 server, past gotaxy: what the
    flooder and the kernel's work take from gotaxy's two processes on this
    machine without gotaxy handling one datagram (``FLOOD_ELSEWHERE``).  On
    a small machine that is the bound of gotaxy's own figure.
    """
    flood = flood_rate(steps)
    results = []
    for path, tcp, udp in ((DIRECT, DIRECT, DIRECT), (GOTAXY, GOTAXY, GOTAXY), (FLOOD_ELSEWHERE, GOTAXY, DIRECT)):
        progress(f"[udp] tcp {tcp} alone, then while {flood:g} Mbit/s of UDP flood its {udp} udp port")
        alone, during, problems = tcp_under_udp_flood(tools, tcp_ports[tcp], udp_ports[udp], duration, flood)
        results.append(FloodResult(path, flood, alone, during, problems))
        time.sleep(1)
    return results


def flood_report(results: List[FloodResult], markdown: bool) -> str:
    """The table "TCP alone vs TCP during a UDP flood"."""
    headers = ["path", "UDP flood offered", "TCP alone", "TCP during the flood", "kept", "goal (>= 80 %)"]
    rows = []
    for r in results:
        if not r.alone or r.during is None:
            rows.append([r.path, f"{r.flood:g} Mbit/s", "–", "–", "–", f"not measured ({r.problems or 'failed'})"])
            continue
        kept = r.during / r.alone
        goal = {GOTAXY: "met" if kept >= FLOOD_GOAL else "NOT met",
                FLOOD_ELSEWHERE: "(the flood's cost to gotaxy's processes, past gotaxy)"}.get(
                    r.path, "(the machine's own cost)")
        rows.append([r.path, f"{r.flood:g} Mbit/s", f"{r.alone:.2f} Gbit/s", f"{r.during:.2f} Gbit/s",
                     f"{kept:.0%}", goal])
    return render(headers, rows, markdown)


def udp_verdict(steps: Dict[str, List[UdpStep]]) -> str:
    gotaxy, socat = best_udp(steps.get(GOTAXY, [])), best_udp(steps.get("socat", []))
    bar = "The UDP bar: gotaxy's highest rate under 1 % loss at least 50 % of socat's."
    if gotaxy is None or socat is None:
        return f"{bar}\n  cannot tell (no rate passed on {'gotaxy' if gotaxy is None else 'socat'})"
    ratio = (gotaxy.received or 0.0) / (socat.received or 1.0)
    return f"{bar}\n  {'met' if ratio >= 0.5 else 'NOT met'} (gotaxy / socat = {ratio:.2f})"


# --- main --------------------------------------------------------------------


# --- many streams through one tunnel (issue 15, goal 2) ------------------------

#: The local service of the streams rows: an asyncio echo server in a child
#: process (one process for 10,000 connections; the benchmark process holds
#: the other 10,000 ends, and each stays within ``ulimit -n``).
STREAMS_ECHO_SERVICE = """
import asyncio, sys
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
async def main():
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""

#: Bytes each of the echoing connections sends and reads back.
STREAMS_ECHO_BYTES = 64 * 1024


@attrs.define
class StreamsResult:
    opened: int
    refused: int
    setup_ms: List[float]
    echoing: int
    echo_seconds: Optional[float]
    echo_intact: int
    memory: Dict[str, Dict[str, Optional[Memory]]]  #: role -> stage -> memory


def _raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _echo_many(socks: List[socket.socket], size: int, timeout: float = 120) -> Tuple[float, int]:
    """Send ``size`` bytes on every socket at once and read them back; (seconds, how many came back intact)."""
    import selectors

    payloads = {s: (b"%08d" % i + bytes([i % 251]) * size)[:size] for i, s in enumerate(socks)}
    sent = dict.fromkeys(socks, 0)
    received: Dict[socket.socket, bytearray] = {s: bytearray() for s in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    started = time.perf_counter()
    left = len(socks)
    deadline = time.monotonic() + timeout
    try:
        while left and time.monotonic() < deadline:
            for key, events in selector.select(timeout=1):
                sock = key.fileobj
                payload = payloads[sock]  # type: ignore[index]
                if events & selectors.EVENT_WRITE:
                    try:
                        sent[sock] += sock.send(payload[sent[sock]:sent[sock] + 65536])  # type: ignore[index, union-attr]
                    except BlockingIOError:
                        pass
                    if sent[sock] == size:  # type: ignore[index]
                        selector.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    buffer = received[sock]  # type: ignore[index]
                    buffer += chunk
                    if not chunk or len(buffer) >= size:
                        selector.unregister(sock)
                        left -= 1
        seconds = time.perf_counter() - started
    finally:
        selector.close()
    intact = sum(1 for sock in socks if bytes(received[sock]) == payloads[sock])
    return seconds, intact


def measure_streams(
    group: ProcessGroup, tools: Dict[str, str], work: Path, source: Path, count: int, echoing: int
) -> StreamsResult:
    """
    ``count`` connections opened one after another through one tcp tunnel
    and held (each one's setup: connect, one byte there and back), then
    ``echoing`` of them each echoing ``STREAMS_ECHO_BYTES`` at once; the
    server's and client's memory before, with all of them idle, and after.
    Its own server and client, so that nothing else they carry counts.
    """
    _raise_nofile(count + 1024)
    echo_port, control_port, public_port, panel_port, console_port = free_ports(5)
    echo = group.start("streams-echo", [sys.executable, "-c", STREAMS_ECHO_SERVICE, str(echo_port)])
    wait_until("the streams echo service to listen", lambda: is_listening(echo_port), [("streams-echo", echo)], group)
    directory = work / "gotaxy-streams"
    directory.mkdir()
    env = gotaxy_env(source)
    server, banner = start_gotaxy_server(
        group, tools, "streams-server", directory, env, control_port,
        ["--allow-ports", str(public_port), "--web-port", str(panel_port), "--console-port", str(console_port)],
    )
    client = start_gotaxy_client(
        group, tools, "streams-client", directory, env, control_port, banner,
        ["--tunnel", f"many=tcp:{LOOPBACK}:{echo_port}:{public_port}"], ["many"], ("streams-server", server),
    )
    wait_until("the streams tunnel to listen", lambda: is_listening(public_port), [("streams-server", server)], group)
    roles = {"server": server.pid, "client": client.pid}
    memory: Dict[str, Dict[str, Optional[Memory]]] = {role: {"before": memory_of(pid)} for role, pid in roles.items()}
    socks: List[socket.socket] = []
    setup: List[float] = []
    refused = 0
    try:
        for n in range(count):
            started = time.perf_counter()
            sock = socket.create_connection((LOOPBACK, public_port), timeout=30)
            try:
                sock.sendall(b"x")
                answered = sock.recv(1) == b"x"
            except OSError:
                answered = False
            if not answered:
                refused += 1
                sock.close()
                continue
            setup.append((time.perf_counter() - started) * 1000)
            socks.append(sock)
            if n % 1000 == 999:
                progress(f"  {n + 1} connections opened through one tunnel, {refused} refused")
        for role, pid in roles.items():
            memory[role]["idle"] = memory_of(pid)
        chosen = socks[:: max(1, len(socks) // echoing)][:echoing] if socks else []
        seconds, intact = _echo_many(chosen, STREAMS_ECHO_BYTES) if chosen else (None, 0)
        for role, pid in roles.items():
            memory[role]["after"] = memory_of(pid)
    finally:
        for sock in socks:
            sock.close()
    return StreamsResult(len(socks), refused, setup, len(chosen), seconds, intact, memory)


def _percentile(values: List[float], fraction: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def streams_report(result: StreamsResult, count: int, markdown: bool) -> str:
    """The streams section: setup times, the echo, both processes' memory."""
    def mib(memory: Optional[Memory]) -> str:
        return "?" if memory is None else f"{memory.rss_kib / 1024:.1f} MiB"

    def ms(value: Optional[float]) -> str:
        return "failed" if value is None else f"{value:.2f} ms"

    rows = [
        ["connections opened and held", f"{result.opened} of {count}" + (f" ({result.refused} refused)" if result.refused else "")],
        ["setup p50 (connect + 1 byte echoed)", ms(_percentile(result.setup_ms, 0.5))],
        ["setup p99", ms(_percentile(result.setup_ms, 0.99))],
    ]
    if result.echo_seconds is not None:
        moved = result.echoing * STREAMS_ECHO_BYTES * 2 / 2**20
        rows.append([
            f"{result.echoing} of them echoing {STREAMS_ECHO_BYTES // 1024} KiB each at once",
            f"{result.echo_seconds:.2f} s, {moved / result.echo_seconds:.0f} MiB/s both ways, "
            f"{result.echo_intact} intact",
        ])
    for role in ("server", "client"):
        stages = result.memory[role]
        rows.append([f"{role} RSS: before / {result.opened} idle / after the echo",
                     " / ".join(mib(stages.get(stage)) for stage in ("before", "idle", "after"))])
        before, idle = stages.get("before"), stages.get("idle")
        if before is not None and idle is not None and result.opened:
            rows.append([f"{role} memory per idle connection",
                         f"{(idle.rss_kib - before.rss_kib) / result.opened:.1f} KiB"])
    return render(["many connections through one tunnel", "gotaxy"], rows, markdown)


def streams_section(group: ProcessGroup, tools: Dict[str, str], work: Path, args: argparse.Namespace) -> str:
    """Measure and render the streams rows (``--streams N``, ``--streams-echoing M``)."""
    progress(f"streams: {args.streams} connections through one tunnel, then {args.streams_echoing} echoing")
    load = os.getloadavg()[0]
    result = measure_streams(group, tools, work, args.source, args.streams, args.streams_echoing)
    load = max(load, os.getloadavg()[0])
    return (f"Many connections through one tunnel: {args.streams} opened one after another and held, then "
            f"{args.streams_echoing} of them echo at once; a server and client of their own "
            f"(machine load average up to {load:.1f} on {os.cpu_count()} CPUs meanwhile)\n"
            + streams_report(result, args.streams, args.markdown))


def in_work_directory(args: argparse.Namespace, prefix: str,
                      body: Callable[[ProcessGroup, Path], None]) -> int:
    """
    ``body(group, work)`` in a new temporary directory, its processes in
    ``group``: the exit status, every process stopped and the directory
    removed (kept with ``--keep``) however it ends.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    group = ProcessGroup(work)
    try:
        body(group, work)
        return 0
    except BenchmarkError as e:
        progress(f"benchmark set-up failed: {e}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted; stopping everything")
        return 130
    finally:
        group.stop_all()
        if getattr(args, "keep", False):
            progress(f"logs and configs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def streams_main(args: argparse.Namespace) -> int:
    """``--streams-only``: the streams rows alone (only twistd is needed)."""
    twistd = find_twistd()
    if twistd is None:
        raise SystemExit("benchmarks/run.py needs twistd (pip install -e . in this repository)")

    def body(group: ProcessGroup, work: Path) -> None:
        print(f"gotaxy {gotaxy_revision(args.source)}; python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, Linux {platform.release()}, everything on 127.0.0.1")
        print(streams_section(group, {"twistd": twistd}, work, args))

    return in_work_directory(args, "gotaxy-bench-streams-", body)


# --- reconnect after a server restart (issue 15, goal 4) ---------------------

#: Restarts measured per way of stopping; the table shows their median and maximum.
RESTARTS = 5
#: The goal: the tunnel carries data again within this many seconds of the new server's start.
RESTART_GOAL = 1.5
#: How long each client session lasts before its server is stopped: longer than
#: the client's STABLE_SESSION (gotaxy/client/reconnect.py), as a real one would.
RESTART_SESSION = 6.0
RESTART_KINDS = (("SIGTERM (clean stop: goodbye)", signal.SIGTERM), ("SIGKILL (killed: no goodbye)", signal.SIGKILL))


@attrs.frozen
class Restart:
    """
    One restart: seconds from spawning the new server to its control port
    listening and to an echoed byte, and the CPU seconds the server had used
    when it began to listen (what a start costs, however busy the machine).
    """

    listening: Optional[float]
    echoed: Optional[float]
    cpu: Optional[float] = None
    problem: str = ""


class ByteEcho:
    """A local service that sends back what it gets, in a thread (the restart rows need no other tool)."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((LOOPBACK, 0))
        self.socket.listen(64)
        self.port = self.socket.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            try:
                while True:
                    data = connection.recv(65536)
                    if not data:
                        return
                    connection.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.socket.close()


def echoes(port: int, timeout: float = 1.0) -> bool:
    """Whether one byte sent to 127.0.0.1:port comes back."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
            s.sendall(b"x")
            return s.recv(1) == b"x"
    except OSError:
        return False


def bytecode_env(source: Path, work: Path) -> Dict[str, str]:
    """
    The environment for the restart rows' processes: the checkout, with
    compiled modules kept (in the run's directory, not the checkout), as an
    installed server has them.  Without them every start compiles every
    module again (PYTHONDONTWRITEBYTECODE), which is not what a restart costs.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def measure_restarts(
    group: ProcessGroup, tools: Dict[str, str], work: Path, source: Path, count: int = RESTARTS,
) -> Dict[str, List[Restart]]:
    """
    A server and a client with one tcp tunnel to an echo service; then, for
    each way of stopping (SIGTERM, SIGKILL), ``count`` times: stop the
    server, spawn a new one on the same data directory and port, and time
    from the spawn to its control port listening (read from /proc/net/tcp,
    no connection made) and to one byte echoed through the tunnel by the
    client that was connected before.  Panel and console stay on, as in a
    default deployment.
    """
    directory = work / "restart"
    directory.mkdir()
    env = bytecode_env(source, work)
    control, public, panel, console = free_ports(4)
    server_argv = [
        tools["twistd"], "-n", "--pidfile=", "gotaxy-server", "--data-dir", str(directory / "server"),
        "--bind-addr", LOOPBACK, "--bind-port", str(control), "--allow-ports", str(public),
        "--web-port", str(panel), "--console-port", str(console),
    ]
    echo = ByteEcho()
    try:
        name = "restart-server-0"
        server = group.start(name, server_argv, env=env, cwd=directory)
        banner: Dict[str, str] = {}

        def banner_printed() -> bool:
            for line in group.log_path(name).read_text(errors="replace").splitlines():
                if "client token" in line:
                    banner["token"] = line.split()[-1]
                elif "server certificate" in line:
                    banner["fingerprint"] = line.split()[-1]
            return len(banner) == 2 and is_listening(control)

        wait_until("the restart rows' server", banner_printed, [(name, server)], group, timeout=120)
        client = group.start("restart-client", [
            tools["twistd"], "-n", "--pidfile=", "gotaxy-client", "--server", f"{LOOPBACK}:{control}",
            "--token", banner["token"], "--fingerprint", banner["fingerprint"],
            "--data-dir", str(directory / "client"), "--tunnel", f"echo=tcp:{LOOPBACK}:{echo.port}:{public}",
        ], env=env, cwd=directory)
        wait_until("the restart rows' tunnel", lambda: echoes(public), [(name, server), ("restart-client", client)],
                   group, timeout=120)
        up_since = time.monotonic()
        results: Dict[str, List[Restart]] = {}
        number = 0
        for label, sig in RESTART_KINDS:
            for attempt in range(count):
                time.sleep(max(0.0, RESTART_SESSION - (time.monotonic() - up_since)))
                _signal_group(server.pid, sig)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    raise BenchmarkError(f"{name} did not stop within 30 s of {signal.Signals(sig).name}")
                number += 1
                name = f"restart-server-{number}"
                started = time.monotonic()
                server = group.start(name, server_argv, env=env, cwd=directory)
                listening: Optional[float] = None
                echoed: Optional[float] = None
                cpu: Optional[float] = None
                problem = ""
                while echoed is None:
                    now = time.monotonic() - started
                    if listening is None and is_listening(control):
                        listening, cpu = now, cpu_seconds(server.pid)
                    if listening is not None and echoes(public, timeout=0.5):
                        echoed = time.monotonic() - started
                        break
                    if server.poll() is not None or client.poll() is not None:
                        problem = "a gotaxy process exited; see the logs in --keep's directory"
                        break
                    if now > 60:
                        problem = "no echo within 60 s"
                        break
                    time.sleep(0.005)
                up_since = time.monotonic()
                results.setdefault(label, []).append(Restart(listening, echoed, cpu, problem))
                shown = f"{echoed:.2f} s" if echoed is not None else problem
                progress(f"[restart] {label} {attempt + 1}/{count}: echoed after {shown}")
                if problem:
                    return results
        return results
    finally:
        echo.close()


def restart_report(results: Dict[str, List[Restart]], markdown: bool) -> str:
    headers = ["server stopped by", "to listening, median (max)", "its CPU until then", "to a byte echoed, median (max)",
               "goal ≤ 1.5 s"]
    rows = []
    for label, runs in results.items():
        def figure(values: List[Optional[float]]) -> str:
            if not values or any(v is None for v in values):
                return "failed"
            known = [v for v in values if v is not None]
            return f"{statistics.median(known):.2f} s ({max(known):.2f} s)"

        echoed = [r.echoed for r in runs]
        met = all(v is not None for v in echoed) and statistics.median(v for v in echoed if v is not None) <= RESTART_GOAL
        rows.append([label, figure([r.listening for r in runs]), figure([r.cpu for r in runs]), figure(echoed),
                     "met" if met else "not met"])
    return render(headers, rows, markdown)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure Gotaxy against a direct connection and ssh -R on loopback (iperf3, wrk, nginx)."
    )
    parser.add_argument("--duration", type=float, default=6, help="seconds per measurement (default 6)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per measurement, one repeat, no re-runs")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per workload and path; the table shows the median (default 3)"
    )
    parser.add_argument(
        "--busy",
        type=float,
        default=0.25,
        help="re-run a measurement when other processes used more than this many cores meanwhile (default 0.25)",
    )
    parser.add_argument(
        "--attempts", type=int, default=3, help="most attempts per measurement on a busy machine (default 3)"
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--file-size", type=int, default=1024, help="bytes in the file nginx serves (default 1024)")
    parser.add_argument("--no-reverse", dest="reverse", action="store_false", help="skip the iperf3 -R run")
    parser.add_argument("--no-udp", dest="udp", action="store_false",
                        help="skip the UDP rows (iperf3 -u direct, through socat and through a udp tunnel)")
    parser.add_argument("--no-vhost", dest="vhost", action="store_false",
                        help="skip the websites-by-name rows (nginx proxy, gotaxy http, PageKite)")
    parser.add_argument("--streams", type=int, default=10000,
                        help="connections held through one tunnel in the streams rows (default 10000; 0 skips them)")
    parser.add_argument("--streams-echoing", type=int, default=1000,
                        help="how many of them then echo at once (default 1000)")
    parser.add_argument("--streams-only", action="store_true",
                        help="only the streams rows (no nginx, iperf3 or ssh needed)")
    parser.add_argument("--no-restart", dest="restart", action="store_false",
                        help="skip the rows of a server restart (time until an existing client's tunnel echoes again)")
    parser.add_argument("--restart-only", action="store_true",
                        help="run only the restart rows (they need nothing but twistd)")
    parser.add_argument("--parallel-only", action="store_true",
                        help="run only benchmarks/parallel.py's rows: two clients pushing iperf3 at once through "
                             "one server node and through two nodes on one PostgreSQL (--repeat rounds, --duration)")
    parser.add_argument("--udp-only", action="store_true",
                        help="run only the UDP rows and TCP during a UDP flood (they need iperf3, socat and twistd)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO_ROOT,
        help="the Gotaxy checkout to measure, e.g. a git worktree of another branch (default: this one)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeat, args.attempts = 2, 1, 1
    if args.duration <= 0 or args.repeat < 1 or args.attempts < 1:
        parser.error("--duration must be positive, --repeat and --attempts at least 1")
    args.source = args.source.resolve()
    if not (args.source / "gotaxy" / "__init__.py").exists():
        parser.error(f"--source {args.source} is not a Gotaxy checkout (no gotaxy/__init__.py there)")
    return args


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def gotaxy_revision(source: Path) -> str:
    """The commit measured, and whether gotaxy/ differed from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "gotaxy", "twisted"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return f"from {source} (not a git checkout)"
    if not commit:
        return f"from {source} (not a git checkout)"
    return f"from {source} at commit {commit}" + (" with uncommitted changes in gotaxy/" if dirty else "")


def environment(tools: Dict[str, str], endpoints: Dict[str, PathEndpoints], args: argparse.Namespace) -> str:
    from importlib.metadata import version

    import OpenSSL

    ssh_version = tool_version([tools["ssh"], "-V"], r"(OpenSSH_\S+)")
    iperf_version = tool_version([tools["iperf3"], "--version"], r"iperf (\S+)")
    wrk_version = tool_version([tools["wrk"], "-v"], r"wrk (\S+)")
    nginx_version = tool_version([tools["nginx"], "-v"], r"nginx/(\S+)")
    return "\n".join(
        [
            f"gotaxy {gotaxy_revision(args.source)}",
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
            "everything on 127.0.0.1",
            f"python {platform.python_version()}, twisted {version('twisted')}, pyOpenSSL {version('pyopenssl')} "
            f"({OpenSSL.SSL.SSLeay_version(OpenSSL.SSL.SSLEAY_VERSION).decode()})",
            f"gotaxy: {endpoints[GOTAXY].description}",
            f"ssh -R: {ssh_version}, cipher {endpoints[SSH].description}",
            f"iperf3 {iperf_version}, wrk {wrk_version}, nginx {nginx_version} "
            f"(1 worker, {args.file_size}-byte file, access_log off)",
            f"{args.duration:g} s per measurement, {args.repeat} run(s) each (median shown); "
            f"wrk -t{args.threads} -c{args.connections}; iperf3 single stream",
        ]
    )


def restart_rows(group: ProcessGroup, tools: Dict[str, str], work: Path, args: argparse.Namespace) -> str:
    """The restart section's text: what was measured, the table, and how."""
    count = 2 if args.quick else RESTARTS
    progress(f"[restart] {count} restarts per way of stopping the server")
    before = os.getloadavg()[0]
    results = measure_restarts(group, tools, work, args.source, count)
    after = os.getloadavg()[0]
    return "\n".join([
        f"Reconnect after a server restart: {count} restarts per row; from spawning the new server (same data "
        "directory and port, panel and console on, compiled modules kept as an installed server has them) to its "
        "control port listening, and to one byte echoed through the tunnel of the client connected before "
        f"(load average {before:.1f} before the rows, {after:.1f} after: a start is CPU-bound, so a busy "
        "machine stretches it)",
        restart_report(results, args.markdown),
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("benchmarks/run.py reads /proc and runs Debian tools; run it on Linux.")
    if args.streams_only:
        return streams_main(args)
    if args.restart_only:
        return main_restart_only(args)
    if args.parallel_only:
        import parallel  # the sibling script (benchmarks/ is on sys.path when run.py runs)

        return parallel.parallel_section(max(args.repeat, 2), args.duration, list(parallel.SETUPS), args.keep)
    tools = locate_tools()
    if args.udp_only:
        return main_udp_only(args, tools)
    chosen = workloads(args.connections, args.threads, args.reverse)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)

    def body(group: ProcessGroup, work: Path) -> None:
        progress(f"working in {work}")
        nginx_port, iperf_ports = start_targets(group, tools, work, args.file_size)
        endpoints = {
            DIRECT: PathEndpoints(DIRECT, http_port=nginx_port, iperf_port=iperf_ports[DIRECT], description="no tunnel")
        }
        udp_ports: Dict[str, int] = {}
        udp_gotaxy: Optional[Tuple[int, int]] = None
        if args.udp:
            udp_targets = start_udp_targets(group, tools)
            udp_ports = {DIRECT: udp_targets[DIRECT], "socat": start_socat(group, tools, udp_targets["socat"])}
            udp_gotaxy = (udp_targets[GOTAXY], free_ports(1)[0])
        progress("starting gotaxy server and client")
        endpoints[GOTAXY] = start_gotaxy(group, tools, work, args.source, nginx_port, iperf_ports[GOTAXY], udp_gotaxy)
        if udp_gotaxy is not None:
            udp_ports[GOTAXY] = udp_gotaxy[1]
        progress("starting sshd and ssh -R")
        endpoints[SSH] = start_ssh(group, tools, work, nginx_port, iperf_ports[SSH])
        check_paths(endpoints, (work / "www" / FILE_NAME).read_bytes())
        vhost_endpoints: Dict[str, PathEndpoints] = {}
        if args.vhost:
            vhost_endpoints[NGINX_DIRECT] = attrs.evolve(endpoints[DIRECT], path=NGINX_DIRECT, host=VHOST_NAME)
            progress("starting the websites paths: nginx reverse proxy, gotaxy http and https, PageKite")
            vhost_endpoints[NGINX_PROXY] = start_nginx_proxy(group, tools, work, nginx_port)
            gotaxy_http = start_gotaxy_http(group, tools, work, args.source, nginx_port)
            if not gotaxy_http:
                progress(f"note: {args.source} has no http tunnels (gotaxy/proxy/vhost.py); no gotaxy http row")
            for ends in gotaxy_http:
                vhost_endpoints[ends.path] = ends
            if "pagekite" in tools:
                vhost_endpoints[PAGEKITE] = start_pagekite(group, tools, work, nginx_port)
            else:
                progress("note: pagekite is not installed (Debian package pagekite); no PageKite row")
            check_vhost_paths(vhost_endpoints, (work / "www" / FILE_NAME).read_bytes())

        memory: Dict[str, Dict[str, Tuple[Optional[Memory], Optional[Memory]]]] = {}
        idle = {
            path: {role: memory_of(pid) for role, pid in endpoints[path].carriers.items()} for path in (GOTAXY, SSH)
        }

        runs: Dict[Tuple[str, str], List[Measurement]] = {}
        for repeat in range(args.repeat):
            for workload in chosen:
                for path in PATHS:
                    result = measure_quietly(
                        workload, tools, endpoints[path], args, group, f"[{repeat + 1}/{args.repeat}]"
                    )
                    runs.setdefault((workload.key, path), []).append(result)

        udp_steps = measure_udp(tools, udp_ports, args.duration) if args.udp else {}
        flood: List[FloodResult] = []
        if args.udp:
            tcp_ports = {path: endpoints[path].iperf_port for path in (DIRECT, GOTAXY)}
            flood = measure_flood(tools, tcp_ports, udp_ports, args.duration, udp_steps)
        vhost_chosen = [w for w in chosen if w.key in ("keepalive", "close")]
        for repeat in range(args.repeat):
            for workload in vhost_chosen:
                for path in vhost_endpoints:
                    result = measure_quietly(
                        workload, tools, vhost_endpoints[path], args, group, f"[{repeat + 1}/{args.repeat}]"
                    )
                    runs.setdefault((workload.key, "vhost:" + path), []).append(result)

        for path in (GOTAXY, SSH):
            memory[path] = {role: (idle[path][role], memory_of(pid)) for role, pid in endpoints[path].carriers.items()}
        summaries = {key: summarize(value) for key, value in runs.items()}
        results = {key: value for key, value in summaries.items() if not key[1].startswith("vhost:")}
        vhost_results = {(key[0], key[1][len("vhost:"):]): value for key, value in summaries.items()
                         if key[1].startswith("vhost:")}
        for name, process in group.started:
            if process.poll() is not None:
                how = (
                    f"was killed by signal {-process.returncode}"
                    if process.returncode < 0
                    else f"exited with status {process.returncode}"
                )
                progress(f"warning: {name} {how} during the run (not by this script); see {group.log_path(name)}")
        print(environment(tools, endpoints, args))
        print()
        print(report(chosen, results, memory, args.markdown))
        print()
        print(verdict(chosen, results))
        if udp_steps:
            print()
            print(f"UDP: iperf3 -u, {UDP_DATAGRAM}-byte datagrams, {args.duration:g} s per step, the rate stepped "
                  f"up until 1 % loss")
            print(udp_report(udp_steps, args.markdown))
            print()
            print(udp_verdict(udp_steps))
        if flood:
            print()
            print(f"TCP alone vs TCP during a UDP flood: one iperf3 stream, alone and while iperf3 -u -l "
                  f"{UDP_DATAGRAM} floods the same path's udp port ({FLOOD_FACTOR}x gotaxy's best UDP rate)")
            print(flood_report(flood, args.markdown))
        if args.streams:
            print()
            print(streams_section(group, tools, work, args))
        if vhost_endpoints:
            print()
            print("\n".join(f"{path}: {ends.description}" for path, ends in vhost_endpoints.items()))
            print()
            print(vhost_report(vhost_chosen, vhost_results, results, list(vhost_endpoints), args.markdown))
            print()
            print(vhost_verdict(vhost_chosen, vhost_results, results, list(vhost_endpoints)))
        if args.restart:
            print()
            print(restart_rows(group, tools, work, args))

    return in_work_directory(args, "gotaxy-bench-", body)


def main_udp_only(args: argparse.Namespace, tools: Dict[str, str]) -> int:
    """``--udp-only``: the UDP rows, then TCP alone vs TCP during a UDP flood, as in a full run."""

    def body(group: ProcessGroup, work: Path) -> None:
        progress(f"working in {work}")
        _, iperf_ports = start_targets(group, tools, work, args.file_size)
        udp_targets = start_udp_targets(group, tools)
        udp_ports = {DIRECT: udp_targets[DIRECT], "socat": start_socat(group, tools, udp_targets["socat"])}
        (public,) = free_ports(1)
        progress("starting gotaxy server and client")
        # The web tunnel is not used here; it points at the iperf3 server of the ssh row, which is idle.
        ends = start_gotaxy(group, tools, work, args.source, iperf_ports[SSH], iperf_ports[GOTAXY],
                            (udp_targets[GOTAXY], public))
        udp_ports[GOTAXY] = public
        udp_steps = measure_udp(tools, udp_ports, args.duration)
        tcp_ports = {DIRECT: iperf_ports[DIRECT], GOTAXY: ends.iperf_port}
        flood = measure_flood(tools, tcp_ports, udp_ports, args.duration, udp_steps)
        print(f"gotaxy {gotaxy_revision(args.source)}")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
              f"python {platform.python_version()}; everything on 127.0.0.1; load average {os.getloadavg()[0]:.1f}")
        print()
        print(f"UDP: iperf3 -u, {UDP_DATAGRAM}-byte datagrams, {args.duration:g} s per step, the rate stepped "
              f"up until 1 % loss")
        print(udp_report(udp_steps, args.markdown))
        print()
        print(udp_verdict(udp_steps))
        print()
        print(f"TCP alone vs TCP during a UDP flood: one iperf3 stream, alone and while iperf3 -u -l "
              f"{UDP_DATAGRAM} floods the same path's udp port ({FLOOD_FACTOR}x gotaxy's best UDP rate)")
        print(flood_report(flood, args.markdown))

    return in_work_directory(args, "gotaxy-bench-udp-", body)


def main_restart_only(args: argparse.Namespace) -> int:
    twistd = find_twistd()
    if twistd is None:
        raise SystemExit("benchmarks/run.py --restart-only needs twistd (pip install -e . in this repository)")

    def body(group: ProcessGroup, work: Path) -> None:
        progress(f"working in {work}")
        text = restart_rows(group, {"twistd": twistd}, work, args)
        print(f"gotaxy {gotaxy_revision(args.source)}")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
              f"python {platform.python_version()}; everything on 127.0.0.1")
        print()
        print(text)

    return in_work_directory(args, "gotaxy-bench-", body)


if __name__ == "__main__":
    sys.exit(main())
