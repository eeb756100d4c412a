#!/usr/bin/env python3
"""
The cost of forwarding a website request to another node (issue 16):
wrk keep-alive requests for one http tunnel, served by the node that holds
its client (a) and routed through a node that forwards them to it (b), in
one run, interleaved.

    python benchmarks/forward.py [--rounds 5] [--duration 4]

Two ``twistd gotaxy-server`` nodes of this checkout share one database
(SQLite in the work directory: the store is not on the data path, the
forwarding node reads which names a serves once a second), each with
``vhostHTTPPort`` and a node-to-node listener whose certificates one
openssl CA issued; one client on a with an http tunnel to nginx (a 1 KiB
file).  Prints the medians and the ratio forwarded / local.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the sibling script: tools, processes, wrk)

LOCAL, FORWARDED = "local (node a)", "forwarded (b to a)"


def openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise run.BenchmarkError(f"openssl {args[0]} failed: {done.stderr.strip()[:200]}")


def make_certificates(directory: Path, names: Sequence[str]) -> Dict[str, Path]:
    """A CA and one node certificate (serverAuth and clientAuth) per name: ca.pem, NAME.pem, NAME.key."""
    directory.mkdir()
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"]
    openssl("req", "-x509", *curve, "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=bench cluster CA")
    for name in names:
        openssl("req", "-x509", *curve, "-CA", str(ca), "-CAkey", str(ca_key), "-keyout", str(directory / f"{name}.key"),
                "-out", str(directory / f"{name}.pem"), "-subj", f"/CN=node {name}",
                "-addext", "extendedKeyUsage=serverAuth,clientAuth", "-addext", "basicConstraints=critical,CA:FALSE")
    return {"ca": ca}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--rounds", type=int, default=5, help="wrk runs per path (default 5)")
    parser.add_argument("--duration", type=float, default=4, help="seconds per wrk run (default 4)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # (so that the processes are stopped on the way out)

    signal.signal(signal.SIGTERM, on_signal)
    tools = run.locate_tools()
    work = Path(tempfile.mkdtemp(prefix="gotaxy-forward-"))
    group = run.ProcessGroup(work)
    try:
        nginx_port, _ = run.start_targets(group, tools, work, 1024)
        certs = make_certificates(work / "certs", ("a", "b"))
        database = f"sqlite:///{work / 'shared.db'}"
        env = run.gotaxy_env(run.REPO_ROOT)
        control_a, control_b, web_a, web_b, peer_a, peer_b = run.free_ports(6)
        nodes: Dict[str, Dict[str, int]] = {"a": {"control": control_a, "web": web_a, "peer": peer_a},
                                            "b": {"control": control_b, "web": web_b, "peer": peer_b}}
        started: Dict[str, object] = {}
        banner: Dict[str, str] = {}
        for name, ports in nodes.items():
            directory = work / f"node-{name}"
            directory.mkdir()
            config = directory / "server.toml"
            config.write_text(textwrap.dedent(f"""\
                vhostHTTPPort = {ports["web"]}
                [cluster]
                bindAddr = "{run.LOOPBACK}"
                bindPort = {ports["peer"]}
                tls.certFile = "{work / 'certs' / f'{name}.pem'}"
                tls.keyFile = "{work / 'certs' / f'{name}.key'}"
                tls.trustedCaFile = "{certs['ca']}"
                """))
            options = ["--config", str(config), "--database-url", database, "--web-port", "0", "--console-port", "0"]
            if name == "a":  # the first start of the database prints the client token
                server, banner = run.start_gotaxy_server(group, tools, "node-a", directory, env, ports["control"],
                                                         options, listening=[ports["web"], ports["peer"]])
            else:
                # Nodes of one database share the notification key (docs/configuration.md).
                (directory / "server").mkdir(mode=0o700)
                shutil.copy(work / "node-a" / "server" / "notify.key", directory / "server" / "notify.key")
                server = group.start("node-b", [tools["twistd"], "-n", "--pidfile=", "gotaxy-server", "--data-dir",
                                                str(directory / "server"), "--bind-addr", run.LOOPBACK, "--bind-port",
                                                str(ports["control"]), *options], env=env, cwd=directory)
                run.wait_until("node b to listen", lambda: all(run.is_listening(nodes["b"][k]) for k in ("web", "peer")),
                               [("node-b", server)], group)
            started[name] = server
        client_config = work / "client.toml"
        client_config.write_text(textwrap.dedent(f"""\
            [[proxies]]
            name = "web"
            type = "http"
            localIP = "{run.LOOPBACK}"
            localPort = {nginx_port}
            customDomains = ["{run.VHOST_NAME}"]
            """))
        client = run.start_gotaxy_client(group, tools, "client", work / "node-a", env, control_a, banner,
                                         ["--config", str(client_config)], ["web"], ("node-a", started["a"]))
        ends = {
            LOCAL: run.PathEndpoints(LOCAL, http_port=web_a, iperf_port=0, host=run.VHOST_NAME,
                                     carriers={"client": client.pid}),
            FORWARDED: run.PathEndpoints(FORWARDED, http_port=web_b, iperf_port=0, host=run.VHOST_NAME,
                                         carriers={"client": client.pid}),
        }

        def forwarded() -> bool:
            rate, problems, _ = run.run_wrk(tools, ends[FORWARDED], 1, 1, 1, False)
            return rate is not None and not problems

        run.wait_until("node b to forward the tunnel's name to node a", forwarded, [("node-b", started["b"])], group)
        results: Dict[str, List[float]] = {}
        errors: Dict[str, List[str]] = {}
        paths = [LOCAL, FORWARDED]
        for round_ in range(args.rounds):
            for path in (paths if round_ % 2 == 0 else list(reversed(paths))):
                rate, problems, _ = run.run_wrk(tools, ends[path], args.duration, args.connections, args.threads, False)
                if rate is None:
                    raise run.BenchmarkError(f"{path}: {problems}")
                results.setdefault(path, []).append(rate)
                if problems:  # (wrk's 2 s timeout on a loaded machine: said, and counted in the table)
                    errors[path] = errors.get(path, []) + [problems]
                note = f"  ({problems})" if problems else ""
                run.progress(f"[{round_ + 1}/{args.rounds}] {path:20} {rate:9.0f} req/s{note}")
        local, through = (statistics.median(results[path]) for path in paths)
        print()
        print(f"gotaxy {run.gotaxy_revision(run.REPO_ROOT)}; wrk -t{args.threads} -c{args.connections} "
              f"-d{args.duration:g}s keep-alive, 1 KiB file from nginx, {args.rounds} interleaved runs each; medians")
        print()
        print("| path | req/s | ratio to local | wrk errors |")
        print("|---|---:|---:|---|")
        print(f"| {LOCAL} | {local:,.0f} | 1.00 | {'; '.join(errors.get(LOCAL, [])) or 'none'} |")
        print(f"| {FORWARDED} | {through:,.0f} | {through / local:.2f} | {'; '.join(errors.get(FORWARDED, [])) or 'none'} |")
        return 0
    except run.BenchmarkError as e:
        run.progress(f"benchmark failed: {e}")
        return 1
    except KeyboardInterrupt:
        run.progress("interrupted; stopping everything")
        return 130
    finally:
        group.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
