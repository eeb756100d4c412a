#!/usr/bin/env python3
"""
What a second server process buys (issue 16): two clients pushing iperf3
at once through one server node, against the same two clients each on a
node of its own, two nodes sharing one PostgreSQL, in one run, interleaved.

    python benchmarks/parallel.py [--rounds 5] [--duration 6]
    python benchmarks/run.py --parallel-only        (the same)

PostgreSQL is started here (Debian's ``initdb`` and ``pg_ctl``, as the test
suite does: tests/postgres.py, on a Unix socket in the work directory, no
TCP port); each set-up gets a database of its own.  Every client has a tcp
tunnel to an iperf3 server of its own; a round runs both ``iperf3 -c`` at
once and adds up what they received.  Printed per set-up: the median sum
in Gbit/s, the ratio to the first set-up, and each Gotaxy process's CPU
seconds per round (a process's own and its children's, so that a set-up
whose server forks workers is counted whole).

A set-up is one function that starts its servers and clients and returns
a ``Setup`` (the public ports the clients' tunnels opened, the processes
to count); ``SETUPS`` lists them in the order they are measured.  All set-ups
run side by side for the whole run (an idle set-up costs next to nothing),
and the rounds alternate their order: A B, B A, A B...

On a machine with 2 cores the figure is what a second process is worth
there, not what a second machine is: both nodes, both clients and the four
iperf3 processes share the same 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the sibling script: tools, processes, iperf3)

sys.path.insert(0, str(run.REPO_ROOT))

from tests.postgres import HOW_TO_GET_IT, PostgresServer, driver_available, find_binaries  # noqa: E402

#: The shared auth.token every server of the benchmark accepts (loopback only, thrown away after the run).
TOKEN = "parallel-benchmark-token"


@attrs.define
class Setup:
    """One way of serving the two clients: where their tunnels are and which processes carry them."""

    name: str
    #: the public port of each client's iperf3 tunnel
    ports: List[int]
    #: label ("node a", "client 1") -> pid; CPU counted with its children
    processes: Dict[str, int]


@attrs.define
class Bench:
    """What every set-up function gets: the run's tools, processes, PostgreSQL and iperf3 servers."""

    group: run.ProcessGroup
    tools: Dict[str, str]
    work: Path
    postgres: PostgresServer
    env: Dict[str, str]
    #: one iperf3 -s port per client
    targets: List[int]
    #: database URL -> the data directory of its first node (whose notification key the others copy)
    first_of: Dict[str, Path] = attrs.field(factory=dict)

    def database(self) -> str:
        """The URL of a new database for one set-up."""
        return self.postgres.url(self.postgres.database())

    def server(self, name: str, url: str, extra: Sequence[str] = ()) -> "Server":
        """
        ``twistd gotaxy-server`` on ``url`` (and ``extra`` options), once it
        listens for clients.  A node after the first of a database gets the first one's
        notification key (nodes of one database share it).
        """
        directory = self.work / name
        directory.mkdir()
        data = directory / "server"
        data.mkdir(mode=0o700)
        first = self.first_of.get(url)
        if first is not None:
            shutil.copy(first / "notify.key", data / "notify.key")
        (control,) = run.free_ports(1)
        argv = [self.tools["twistd"], "-n", "--pidfile=", "gotaxy-server", "--data-dir", str(data),
                "--bind-addr", run.LOOPBACK, "--bind-port", str(control), "--database-url", url,
                "--token", TOKEN, "--web-port", "0", "--console-port", "0", *extra]
        process = self.group.start(name, argv, env=self.env, cwd=directory)
        found: Dict[str, str] = {}

        def listening() -> bool:
            text = self.group.log_path(name).read_text(errors="replace")
            for line in text.splitlines():
                if "listening for clients on" in line and "certificate SHA256:" in line:
                    found["fingerprint"] = "SHA256:" + line.split("certificate SHA256:")[1].split()[0].rstrip(",)")
            return "fingerprint" in found and run.is_listening(control)

        run.wait_until(f"{name} to listen for clients", listening, [(name, process)], self.group)
        self.first_of.setdefault(url, data)
        return Server(name, process, control, found["fingerprint"])

    def client(self, name: str, server: "Server", target: int) -> Tuple[int, int]:
        """A client of ``server`` with one tcp tunnel to iperf3 -s on ``target``; its pid and public port."""
        control, fingerprint = server.control, server.fingerprint
        (public,) = run.free_ports(1)
        directory = self.work / name
        directory.mkdir()
        argv = [self.tools["twistd"], "-n", "--pidfile=", "gotaxy-client", "--server", f"{run.LOOPBACK}:{control}",
                "--token", TOKEN, "--user", name, "--fingerprint", fingerprint, "--data-dir", str(directory / "client"),
                "--tunnel", f"iperf=tcp:{run.LOOPBACK}:{target}:{public}"]
        process = self.group.start(name, argv, env=self.env, cwd=directory)
        run.wait_until(f"{name}'s tunnel to come up",
                       lambda: "tunnel iperf up at" in self.group.log_path(name).read_text(errors="replace"),
                       [(server.name, server.process), (name, process)], self.group)
        return process.pid, public


@attrs.frozen
class Server:
    name: str
    process: subprocess.Popen
    control: int
    fingerprint: str


def one_node(bench: Bench) -> Setup:
    """Both clients on one server."""
    url = bench.database()
    server = bench.server("1node-server", url)
    one, port_one = bench.client("1node-client1", server, bench.targets[0])
    two, port_two = bench.client("1node-client2", server, bench.targets[1])
    return Setup("1 node", [port_one, port_two],
                 {"node": server.process.pid, "client 1": one, "client 2": two})


def two_nodes(bench: Bench) -> Setup:
    """Two server nodes on one database, one client on each."""
    url = bench.database()
    a = bench.server("2nodes-a", url)
    b = bench.server("2nodes-b", url)
    one, port_one = bench.client("2nodes-client1", a, bench.targets[0])
    two, port_two = bench.client("2nodes-client2", b, bench.targets[1])
    return Setup("2 nodes", [port_one, port_two],
                 {"node a": a.process.pid, "node b": b.process.pid, "client 1": one, "client 2": two})


def two_workers(bench: Bench) -> Setup:
    """
    One server with ``--workers 2`` (issue 15, goal 5): the process started
    starts worker 2 and hands each client to the one holding fewer, so the
    clients are one on each.  Against "1 node", which is one worker.
    """
    url = bench.database()
    server = bench.server("2workers-server", url, ["--workers", "2"])
    log = bench.group.log_path(server.name)
    found: Dict[str, int] = {}

    def worker_listens() -> bool:
        text = log.read_text(errors="replace")
        for line in text.splitlines():
            if "worker 2 started (pid " in line:
                found["pid"] = int(line.split("worker 2 started (pid ")[1].split(")")[0])
        return "pid" in found and any("[worker 2 " in line and "listening for clients on" in line
                                      for line in text.splitlines())

    run.wait_until("worker 2 to start", worker_listens, [(server.name, server.process)], bench.group)
    one, port_one = bench.client("2workers-client1", server, bench.targets[0])
    two, port_two = bench.client("2workers-client2", server, bench.targets[1])
    # Worker 1 is the server's process without its child, worker 2: process_cpu counts a pid with its children.
    return Setup("2 workers", [port_one, port_two],
                 {"workers 1+2": server.process.pid, "worker 2": found["pid"], "client 1": one, "client 2": two})


#: name -> set-up function, in the order they are measured (the first is the ratios' base).
SETUPS: Dict[str, Callable[[Bench], Setup]] = {"1 node": one_node, "2 nodes": two_nodes, "2 workers": two_workers}


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every process under it (a server's workers)."""
    return sum(run.cpu_seconds(each) for each in [pid, *run.descendants_of(pid)])


@attrs.define
class Round:
    gbits: float
    each: List[float]
    cpu: Dict[str, float]
    foreign: float  # cores' worth of CPU other processes on the machine used meanwhile
    problems: str = ""


def measure(bench: Bench, setup: Setup, duration: float) -> Round:
    """Both iperf3 clients at once; the sum of what they received, and the CPU each process used."""
    results: List[Tuple[Optional[float], str, str]] = [(None, "not run", "")] * len(setup.ports)

    def push(index: int, port: int) -> None:
        ends = run.PathEndpoints(setup.name, http_port=0, iperf_port=port)
        results[index] = run.run_iperf3(bench.tools, ends, duration, False)

    before = {label: process_cpu(pid) for label, pid in setup.processes.items()}
    machine = run.machine_cpu(bench.group)
    threads = [threading.Thread(target=push, args=(i, port)) for i, port in enumerate(setup.ports)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    foreign = run.machine_cpu(bench.group).foreign_since(machine) / duration
    cpu = {label: process_cpu(pid) - before[label] for label, pid in setup.processes.items()}
    each = [value or 0.0 for value, _, _ in results]
    problems = "; ".join(problem for _, problem, _ in results if problem)
    return Round(sum(each), each, cpu, foreign, problems)


def report(setups: List[Setup], rounds: Dict[str, List[Round]], args: argparse.Namespace) -> str:
    base = statistics.median(r.gbits for r in rounds[setups[0].name])
    lines = [
        f"gotaxy {run.gotaxy_revision(run.REPO_ROOT)}; two iperf3 -c at once, -t {args.duration:g}, "
        f"{args.rounds} interleaved rounds per set-up, PostgreSQL store; medians; "
        f"other processes used {statistics.median(r.foreign for rs in rounds.values() for r in rs):.2f} cores "
        "meanwhile (median)",
        "",
        "| set-up | sum Gbit/s | ratio | per client Gbit/s | CPU s per round (each process) | errors |",
        "|---|---:|---:|---|---|---|",
    ]
    for setup in setups:
        done = rounds[setup.name]
        total = statistics.median(r.gbits for r in done)
        clients = " + ".join(f"{statistics.median(r.each[i] for r in done):.2f}" for i in range(len(setup.ports)))
        cpu = ", ".join(f"{label} {statistics.median(r.cpu[label] for r in done):.1f}" for label in setup.processes)
        errors = "; ".join(r.problems for r in done if r.problems) or "none"
        lines.append(f"| {setup.name} | {total:.2f} | {total / base:.2f} | {clients} | {cpu} | {errors} |")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--rounds", type=int, default=5, help="rounds per set-up (default 5)")
    parser.add_argument("--duration", type=float, default=6, help="seconds of each iperf3 run (default 6)")
    parser.add_argument("--only", action="append", choices=list(SETUPS),
                        help="measure only this set-up (repeatable; default all)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return parallel_section(args.rounds, args.duration, args.only or list(SETUPS), args.keep)


def parallel_section(rounds: int, duration: float, chosen: Sequence[str], keep: bool = False) -> int:
    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # (so that the processes are stopped on the way out)

    signal.signal(signal.SIGTERM, on_signal)
    bin_dir = find_binaries()
    if bin_dir is None or not driver_available():
        run.progress(f"benchmark failed: {HOW_TO_GET_IT}")
        return 1
    tools = run.locate_tools()
    work = Path(tempfile.mkdtemp(prefix="gotaxy-parallel-"))
    group = run.ProcessGroup(work)
    postgres = PostgresServer(bin_dir)
    try:
        postgres.start()
        targets = run.free_ports(2)
        waiting = [(f"iperf3-server-{i}", group.start(f"iperf3-server-{i}", [tools["iperf3"], "-s", "-B", run.LOOPBACK,
                                                                              "-p", str(port)]))
                   for i, port in enumerate(targets, 1)]
        run.wait_until("the iperf3 servers to listen", lambda: all(run.is_listening(p) for p in targets), waiting, group)
        bench = Bench(group, tools, work, postgres, run.gotaxy_env(run.REPO_ROOT), targets)
        setups = [SETUPS[name](bench) for name in chosen]
        results: Dict[str, List[Round]] = {setup.name: [] for setup in setups}
        for round_ in range(rounds):
            for setup in (setups if round_ % 2 == 0 else list(reversed(setups))):
                done = measure(bench, setup, duration)
                results[setup.name].append(done)
                note = f"  ({done.problems})" if done.problems else ""
                run.progress(f"[{round_ + 1}/{rounds}] {setup.name:10} {done.gbits:6.2f} Gbit/s "
                             f"({' + '.join(f'{g:.2f}' for g in done.each)}), others {done.foreign:.2f} cores{note}")
        print()
        print(report(setups, results, argparse.Namespace(rounds=rounds, duration=duration)))
        return 0
    except (run.BenchmarkError, subprocess.CalledProcessError, RuntimeError) as e:
        run.progress(f"benchmark failed: {e}")
        return 1
    except KeyboardInterrupt:
        run.progress("interrupted; stopping everything")
        return 130
    finally:
        group.stop_all()
        postgres.stop()
        if keep:
            run.progress(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
