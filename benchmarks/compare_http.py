#!/usr/bin/env python3
"""
Compare the http front (``vhostHTTPPort``) of two Gotaxy checkouts, in one
run, interleaved, each against Gotaxy's own TCP tunnel to the same nginx.

    git worktree add --detach /tmp/before <commit>
    python benchmarks/compare_http.py /tmp/before .

The issue's goal for the http front is a ratio *in the same run*
(keep-alive req/s at least 0.70 of the TCP tunnel's), and on a shared
machine two runs differ by more than a change to the front does.  So this
starts one nginx, the candidate's server and client with a ``tcp`` tunnel
to it, and each checkout's server and client with an ``http`` tunnel to
it, then alternates wrk runs (TCP, baseline, candidate; the order turning
round each round) and prints medians and the ratios to the TCP tunnel.

``--hold SECONDS`` starts everything, prints the ports and pids (for
py-spy) and waits, instead of measuring.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (the sibling script: tools, processes, wrk)

TCP = "tcp tunnel"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("baseline", type=Path, help="the checkout to compare against (e.g. a worktree of the old commit)")
    parser.add_argument("candidate", type=Path, nargs="?", default=run.REPO_ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=5, help="wrk runs per path and workload (default 5)")
    parser.add_argument("--duration", type=float, default=4, help="seconds per wrk run (default 4)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--hold", type=float, default=0, help="start everything and wait this long instead of measuring")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # (so that the processes are stopped on the way out)

    signal.signal(signal.SIGTERM, on_signal)
    tools = run.locate_tools()
    work = Path(tempfile.mkdtemp(prefix="gotaxy-compare-http-"))
    groups: List[run.ProcessGroup] = []
    names = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}
    try:
        targets = run.ProcessGroup(work)
        groups.append(targets)
        nginx_port, iperf_ports = run.start_targets(targets, tools, work, 1024)
        ends: Dict[str, run.PathEndpoints] = {}
        (work / "tcp").mkdir()
        tcp_group = run.ProcessGroup(work / "tcp")
        groups.append(tcp_group)
        run.progress(f"starting the candidate's tcp tunnel ({run.gotaxy_revision(names['candidate'])})")
        ends[TCP] = run.start_gotaxy(tcp_group, tools, work / "tcp", names["candidate"], nginx_port,
                                     iperf_ports[run.GOTAXY])
        for name, source in names.items():
            (work / name).mkdir()
            group = run.ProcessGroup(work / name)
            groups.append(group)
            run.progress(f"starting the {name}'s http tunnel ({run.gotaxy_revision(source)})")
            http = run.start_gotaxy_http(group, tools, work / name, source, nginx_port)
            if not http:
                raise run.BenchmarkError(f"{source} has no http tunnels (gotaxy/proxy/vhost.py)")
            ends[name] = http[0]
        if args.hold:
            for name, end in ends.items():
                print(f"{name}: port {end.http_port} host {end.host or '-'} pids {end.carriers}", flush=True)
            time.sleep(args.hold)
            return 0
        paths = [TCP, *names]
        results: Dict[tuple, List[float]] = {}
        for workload, close in (("keep-alive", False), ("new conn per request", True)):
            for round_ in range(args.rounds):
                order = paths if round_ % 2 == 0 else list(reversed(paths))
                for path in order:
                    rate, problems, _ = run.run_wrk(tools, ends[path], args.duration, args.connections, args.threads,
                                                    close)
                    if rate is None:
                        raise run.BenchmarkError(f"{path}: {problems}")
                    results.setdefault((workload, path), []).append(rate)
                    note = f"  ({problems})" if problems else ""
                    run.progress(f"[{round_ + 1}/{args.rounds}] {workload:21} {path:10} {rate:9.0f} req/s{note}")
        print()
        for name, source in names.items():
            print(f"{name}: gotaxy {run.gotaxy_revision(source)}")
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, 1 KiB file from nginx, "
              f"{args.rounds} interleaved runs each; medians, ratios to the tcp tunnel of the same run")
        print()
        print("| workload | tcp tunnel req/s | baseline http req/s | ratio | candidate http req/s | ratio |")
        print("|---|---:|---:|---:|---:|---:|")
        for workload in ("keep-alive", "new conn per request"):
            tcp, base, cand = (statistics.median(results[(workload, path)]) for path in paths)
            print(f"| {workload} | {tcp:,.0f} | {base:,.0f} | {base / tcp:.2f} | {cand:,.0f} | {cand / tcp:.2f} |")
        return 0
    except run.BenchmarkError as e:
        run.progress(f"benchmark failed: {e}")
        return 1
    except KeyboardInterrupt:
        run.progress("interrupted; stopping everything")
        return 130
    finally:
        for group in reversed(groups):
            group.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
