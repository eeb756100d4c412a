#!/usr/bin/env python3
"""
TCP on the same client during a UDP flood (issue 12): two Gotaxy checkouts and the direct path, interleaved.

    git worktree add --detach /tmp/before <commit>
    python benchmarks/compare_flood.py /tmp/before .

``run.py``'s row "TCP alone vs TCP during a UDP flood" is one pair of
iperf3 runs per path, and on a shared machine the ratio it gives moves by
more than a change to the UDP path does.  This script starts both
checkouts' server and client side by side, each with a tcp tunnel to an
iperf3 server and a udp tunnel (plus iperf3's control connection) to
another, and measures, round after round, direct, baseline and candidate
(the order turned round every other round): one iperf3 TCP stream alone,
then again while ``iperf3 -u -l 1200 -b FLOOD`` floods the same path's udp
port (``run.tcp_under_udp_flood``).  The figure is the share of its
throughput the TCP stream kept; the direct path's share is what the flood
costs the machine itself (the flooder and the receiver take CPU).  Beside
it: the CPU the gotaxy server and client spent per GB alone and flooded,
the datagrams a second that reached the udp service during the flood,
and what the other processes of the machine took meanwhile.  Before the
rounds, what one datagram costs each checkout (``datagram_cost``), the
figure the datagrams' share of a busy connection is reckoned with
(``gotaxy.mux.DATAGRAM_OVERHEAD``).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the sibling script: tools, processes, iperf3)

#: Mbit/s offered by default: four times the highest rate the udp tunnel passed in the full run at 994b182.
DEFAULT_FLOOD = 744.0


@attrs.frozen
class Phases:
    """One round on one path: Gbit/s alone and flooded, and the gotaxy processes' CPU seconds per GB in each."""

    alone: float
    during: float
    alone_cost: float = 0.0
    during_cost: float = 0.0
    offered: float = 0.0  #: datagrams/s the flooder sent
    passed: float = 0.0  #: datagrams/s of it that reached the udp service while the TCP stream ran

    @property
    def kept(self) -> float:
        return self.during / self.alone


def measure(tools: Dict[str, str], tcp_port: int, udp_port: int, duration: float, flood: float,
            pids: Sequence[int]) -> Optional[Phases]:
    """``run.tcp_under_udp_flood``'s two runs, with the CPU of ``pids`` during each."""

    def cpu() -> float:
        return sum(run.cpu_seconds(pid) for pid in pids)

    def cost(spent: float, gbits: float) -> float:
        return spent / (gbits * duration / 8) if pids else 0.0

    before = cpu()
    alone, _ = run.iperf3_tcp(tools, tcp_port, duration)
    alone_cpu = cpu() - before
    time.sleep(1)
    # The flood starts a second before the TCP run and ends about a second after it, then reports.
    flooding = run.start_flood(tools, udp_port, flood, duration + 2, report=True)
    try:
        time.sleep(1)  # the flood is under way
        before = cpu()
        during, _ = run.iperf3_tcp(tools, tcp_port, duration)
        during_cpu = cpu() - before
    finally:
        # The server's intervals that the TCP run spans whole (its second 1 to duration + 1).
        rates = run.flood_passed(flooding, 20, 2, int(duration))
    if not alone or not during:
        return None
    offered, passed = rates or (0.0, 0.0)
    return Phases(alone, during, cost(alone_cpu, alone), cost(during_cpu, during), offered, passed)


def datagram_cost(tools: Dict[str, str], tcp_port: int, udp_port: int, duration: float,
                  pids: Sequence[int]) -> Optional[Tuple[float, float]]:
    """
    What one 1,200-byte datagram costs the gotaxy processes ``pids``: (CPU
    µs per datagram of iperf3 -u at 60 Mbit/s through the udp tunnel, and
    as many bytes of one TCP stream through the tcp tunnel as cost the same).
    """

    def cpu() -> float:
        return sum(run.cpu_seconds(pid) for pid in pids)

    before = cpu()
    step = run.run_iperf3_udp(tools, udp_port, 60, duration)
    udp_cpu = cpu() - before
    before = cpu()
    gbits, _ = run.iperf3_tcp(tools, tcp_port, duration)
    tcp_cpu = cpu() - before
    if not step.pps or not gbits:
        return None
    per_datagram = udp_cpu / (step.pps * duration)
    return per_datagram * 1e6, per_datagram / (tcp_cpu / (gbits * 1e9 / 8 * duration))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("baseline", type=Path, help="the checkout to compare against (e.g. a worktree of the old commit)")
    parser.add_argument("candidate", type=Path, nargs="?", default=run.REPO_ROOT,
                        help="the checkout to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (each: direct, baseline, candidate; default 6)")
    parser.add_argument("--duration", type=float, default=4, help="seconds per iperf3 TCP run (default 4)")
    parser.add_argument("--cost-rounds", type=int, default=2,
                        help="runs of the datagram's cost (iperf3 -u, then TCP, per checkout; default 2, 0: none)")
    parser.add_argument("--flood", type=float, default=DEFAULT_FLOOD,
                        help=f"Mbit/s of 1,200-byte datagrams offered (default {DEFAULT_FLOOD:g})")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    tools = run.locate_tools()

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # in_work_directory stops every process started

    signal.signal(signal.SIGTERM, on_signal)
    names = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}

    def body(group: run.ProcessGroup, work: Path) -> None:
        nginx_port, iperf_ports = run.start_targets(group, tools, work, 1024)
        udp_targets = run.start_udp_targets(group, tools)
        # One iperf3 server (TCP) and one (UDP) per path: a server still closing one test refuses the next.
        tcp = dict(zip((run.DIRECT, *names), (iperf_ports[run.DIRECT], iperf_ports[run.GOTAXY], iperf_ports[run.SSH])))
        udp = dict(zip((run.DIRECT, *names), (udp_targets[run.DIRECT], udp_targets["socat"], udp_targets[run.GOTAXY])))
        public_tcp, public_udp = dict(tcp), dict(udp)
        carriers: Dict[str, Dict[str, int]] = {}
        for name, source in names.items():
            (work / name).mkdir()
            run.progress(f"starting the {name}'s server and client ({run.gotaxy_revision(source)})")
            (public,) = run.free_ports(1)
            ends = run.start_gotaxy(group, tools, work / name, source, nginx_port, tcp[name], (udp[name], public))
            public_tcp[name], public_udp[name] = ends.iperf_port, public
            carriers[name] = ends.carriers
        costs: Dict[str, List[Tuple[float, float]]] = {name: [] for name in names}
        for _ in range(args.cost_rounds):
            for name in names:
                cost = datagram_cost(tools, public_tcp[name], public_udp[name], args.duration,
                                     list(carriers[name].values()))
                if cost is not None:
                    costs[name].append(cost)
                    run.progress(f"{name}: a 1,200-byte datagram costs {cost[0]:.0f} CPU µs, as much as "
                                 f"{cost[1]:,.0f} bytes of a stream")
        paths = [run.DIRECT, *names]
        results: Dict[str, List[Phases]] = {path: [] for path in paths}
        others: List[float] = []
        for round_ in range(args.rounds):
            order = paths if round_ % 2 == 0 else [paths[0], *reversed(paths[1:])]
            for path in order:
                pids = list(carriers.get(path, {}).values())
                machine_before = run.machine_cpu(group)
                started = time.monotonic()
                phases = measure(tools, public_tcp[path], public_udp[path], args.duration, args.flood, pids)
                others.append(run.machine_cpu(group).foreign_since(machine_before) / (time.monotonic() - started))
                if phases is None:
                    run.progress(f"[{round_ + 1}/{args.rounds}] {path:9} failed")
                    continue
                results[path].append(phases)
                cost = (f", gotaxy CPU s/GB {phases.alone_cost:.2f} alone, {phases.during_cost:.2f} flooded"
                        if pids else "")
                run.progress(f"[{round_ + 1}/{args.rounds}] {path:9} alone {phases.alone:5.2f} Gbit/s, flooded "
                             f"{phases.during:5.2f} Gbit/s: kept {phases.kept:4.0%}{cost}; datagrams/s passed "
                             f"{phases.passed:,.0f} of {phases.offered:,.0f} (other processes {others[-1]:.2f} cores)")
                time.sleep(1)
        print()
        for name, source in names.items():
            print(f"{name}: gotaxy {run.gotaxy_revision(source)}")
        print(f"one iperf3 TCP stream, {args.duration:g} s alone and {args.duration:g} s while iperf3 -u -l "
              f"{run.UDP_DATAGRAM} -b {args.flood:g}M floods the same path's udp port; {args.rounds} interleaved "
              f"rounds; other processes took {statistics.median(others):.2f} cores (median, "
              f"{min(others):.2f} to {max(others):.2f})")
        for name in names:
            if costs[name]:
                print(f"{name}: a 1,200-byte datagram (iperf3 -u at 60 Mbit/s) cost the server and client "
                      f"{statistics.median(c[0] for c in costs[name]):.0f} CPU µs, as much as "
                      f"{statistics.median(c[1] for c in costs[name]):,.0f} bytes of one TCP stream "
                      f"({len(costs[name])} runs, median)")
        print()
        print("| path | TCP alone | TCP flooded | kept, each round | kept (median) "
              "| gotaxy CPU s/GB alone | flooded | datagrams/s passed (offered) |")
        print("|---|---:|---:|---|---:|---:|---:|---:|")
        for path in paths:
            got = results[path]
            if not got:
                print(f"| {path} | – | – | – | not measured | | | |")
                continue

            def median(values: Sequence[float]) -> float:
                return statistics.median(values)

            each = ", ".join(f"{p.kept:.0%}" for p in got)
            costs = (f"{median([p.alone_cost for p in got]):.2f} | {median([p.during_cost for p in got]):.2f}"
                     if path != run.DIRECT else "– | –")
            print(f"| {path} | {median([p.alone for p in got]):.2f} Gbit/s | {median([p.during for p in got]):.2f} "
                  f"Gbit/s | {each} | {median([p.kept for p in got]):.0%} | {costs} "
                  f"| {median([p.passed for p in got]):,.0f} ({median([p.offered for p in got]):,.0f}) |")

    return run.in_work_directory(args, "gotaxy-compare-flood-", body)


if __name__ == "__main__":
    sys.exit(main())
