#!/usr/bin/env python3
"""
Compare the data path of two Gotaxy checkouts, in one run, interleaved.

    git worktree add --detach /tmp/before <commit>
    python benchmarks/compare.py /tmp/before .

``run.py`` measures Gotaxy against ``ssh -R``; between two of its runs the
machine changes (other load, a noisy neighbour's steal time), so two runs'
ratios differ by more than a small change to the data path does.  This
script answers "did this change make the data path slower?" instead: it
starts both checkouts' server and client side by side, each in front of
its own iperf3 server, and alternates single-stream iperf3 runs between them
(A B, B A, A B, ...) so both see the same conditions.  Besides throughput it
reports the CPU seconds the server and client spent per GB carried, which
moves far less with the machine's load than Gbit/s does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the sibling script: tools, processes, iperf3)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("baseline", type=Path, help="the checkout to compare against (e.g. a worktree of the old commit)")
    parser.add_argument("candidate", type=Path, nargs="?", default=run.REPO_ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=8, help="iperf3 runs per checkout and direction (default 8)")
    parser.add_argument("--duration", type=float, default=4, help="seconds per iperf3 run (default 4)")
    parser.add_argument("--http-close", action="store_true",
                        help="also interleave wrk runs with a new connection per request (req/s, CPU µs/request)")
    return parser.parse_args(argv)


def measure(tools: Dict[str, str], ends: "run.PathEndpoints", duration: float, reverse: bool) -> Tuple[float, float]:
    """Gbit/s of one iperf3 run, and the CPU seconds per GB its server and client spent."""
    pids = list(ends.carriers.values())
    before = sum(run.cpu_seconds(pid) for pid in pids)
    for _ in range(10):
        gbits, problem, _ = run.run_iperf3(tools, ends, duration, reverse)
        if gbits is not None or "busy" not in problem:
            break
        # The iperf3 server is still closing the previous test (runs of one
        # checkout come back to back where the order turns round).
        time.sleep(0.5)
    if gbits is None:
        raise run.BenchmarkError(problem)
    spent = sum(run.cpu_seconds(pid) for pid in pids) - before
    return gbits, spent / (gbits * duration / 8)


def measure_http_close(tools: Dict[str, str], ends: "run.PathEndpoints", duration: float) -> Tuple[float, float]:
    """Requests per second of one wrk run with a new connection per request, and the CPU µs per request."""
    pids = list(ends.carriers.values())
    before = sum(run.cpu_seconds(pid) for pid in pids)
    rate, problem, _ = run.run_wrk(tools, ends, duration, connections=50, threads=2, new_connection=True)
    if rate is None:
        raise run.BenchmarkError(problem)
    spent = sum(run.cpu_seconds(pid) for pid in pids) - before
    return rate, spent / (rate * duration) * 1e6


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    tools = run.locate_tools()
    names = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}

    def body(group: run.ProcessGroup, work: Path) -> None:
        nginx_port, iperf_ports = run.start_targets(group, tools, work, 1024)
        ends = {}
        # run.py starts one iperf3 server per path; each checkout gets its own
        # (an iperf3 server still closing one test refuses the next).
        ports = dict(zip(names, (iperf_ports[run.GOTAXY], iperf_ports[run.SSH])))
        for name, source in names.items():
            (work / name).mkdir()
            run.progress(f"starting the {name}'s server and client ({run.gotaxy_revision(source)})")
            ends[name] = run.start_gotaxy(group, tools, work / name, source, nginx_port, ports[name])
        results: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
        for direction, reverse in (("public→service", False), ("service→public (-R)", True)):
            for round_ in range(args.rounds):
                order = list(names) if round_ % 2 == 0 else list(reversed(names))
                for name in order:
                    gbits, cpu = measure(tools, ends[name], args.duration, reverse)
                    results.setdefault((direction, name), []).append((gbits, cpu))
                    run.progress(f"[{round_ + 1}/{args.rounds}] {direction:22} {name:9} {gbits:6.2f} Gbit/s  {cpu:.2f} CPU s/GB")
        if args.http_close:
            for round_ in range(args.rounds):
                order = list(names) if round_ % 2 == 0 else list(reversed(names))
                for name in order:
                    rate, cpu = measure_http_close(tools, ends[name], args.duration)
                    results.setdefault(("new conn", name), []).append((rate, cpu))
                    run.progress(f"[{round_ + 1}/{args.rounds}] {'HTTP new conn':22} {name:9} {rate:8.0f} req/s  {cpu:.0f} CPU µs/request")
        print()
        for name, source in names.items():
            print(f"{name}: gotaxy {run.gotaxy_revision(source)}")
        print(f"iperf3 single stream, {args.duration:g} s per run, {args.rounds} interleaved runs each; medians")
        print()
        print("| direction | baseline Gbit/s | candidate Gbit/s | ratio | baseline CPU s/GB | candidate CPU s/GB | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for direction in ("public→service", "service→public (-R)"):
            base = results[(direction, "baseline")]
            cand = results[(direction, "candidate")]
            bg, cg = (statistics.median(g for g, _ in r) for r in (base, cand))
            bc, cc = (statistics.median(c for _, c in r) for r in (base, cand))
            print(f"| {direction} | {bg:.2f} | {cg:.2f} | {cg / bg:.2f} | {bc:.2f} | {cc:.2f} | {cc / bc:.2f} |")
        if args.http_close:
            base, cand = results[("new conn", "baseline")], results[("new conn", "candidate")]
            br, cr = (statistics.median(r for r, _ in x) for x in (base, cand))
            bc, cc = (statistics.median(c for _, c in x) for x in (base, cand))
            print()
            print("| wrk -t2 -c50, new connection per request | baseline req/s | candidate req/s | ratio "
                  "| baseline CPU µs/request | candidate CPU µs/request | ratio |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            print(f"| HTTP new conn | {br:,.0f} | {cr:,.0f} | {cr / br:.2f} | {bc:.0f} | {cc:.0f} | {cc / bc:.2f} |")

    return run.in_work_directory(args, "gotaxy-compare-", body)


if __name__ == "__main__":
    sys.exit(main())
