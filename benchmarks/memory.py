"""
Memory alone (issue 15, goal 3), in under a minute: the gotaxy server (panel
and console on) and client, and sshd's session and ``ssh -R``, started as
``run.py`` starts them; their resident set (``VmRSS``) and its peak
(``VmHWM``) from ``/proc/PID/status`` once the tunnels are up, and, with
``--load SECONDS``, again after iperf3 both ways and wrk through each.

    python benchmarks/memory.py                 # idle figures
    python benchmarks/memory.py --load 4        # and after 3 x 4 s of load
    python benchmarks/memory.py --source DIR    # another checkout (before/after)

``run.py`` has the same rows in its table, after its full load; this is for
a change's before and after without running the whole benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import run


def figures(endpoints: Dict[str, run.PathEndpoints]) -> Dict[Tuple[str, str], Optional[run.Memory]]:
    return {(path, role): run.memory_of(pid) for path, ends in endpoints.items() for role, pid in ends.carriers.items()}


def table(moments: List[Tuple[str, Dict[Tuple[str, str], Optional[run.Memory]]]], markdown: bool) -> str:
    headers = ["process", "moment", "gotaxy RSS", "gotaxy peak", f"{run.SSH} RSS", f"{run.SSH} peak",
               "goal (issue 15)"]
    rows = []
    for role in ("server", "client"):
        for moment, found in moments:
            gotaxy, ssh = found.get((run.GOTAXY, role)), found.get((run.SSH, role))
            mib = [None if m is None else getattr(m, field) / 1024 for m in (gotaxy, ssh) for field in ("rss_kib", "hwm_kib")]
            label = "RSS before load, VmRSS" if moment == "idle" else "RSS after load, VmRSS"
            goals = [run.memory_goal(role, label, mib[0]),
                     run.memory_goal(role, label.replace("RSS", "peak RSS", 1).replace("VmRSS", "VmHWM"), mib[1])]
            rows.append([role, moment, *(run.format_value(v, "MiB") for v in mib),
                         "; ".join(g for g in goals if g != "—") or "—"])
    return run.render(headers, rows, markdown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=float, default=0.0, help="seconds of each load step (default: none)")
    parser.add_argument("--source", type=Path, default=run.REPO_ROOT, help="the Gotaxy checkout to measure")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    tools = run.locate_tools()

    def body(group: run.ProcessGroup, work: Path) -> None:
        nginx_port, iperf_ports = run.start_targets(group, tools, work, 1024)
        endpoints = {
            run.GOTAXY: run.start_gotaxy(group, tools, work, args.source.resolve(), nginx_port, iperf_ports[run.GOTAXY]),
            run.SSH: run.start_ssh(group, tools, work, nginx_port, iperf_ports[run.SSH]),
        }
        moments = [("idle", figures(endpoints))]
        if args.load:
            for ends in endpoints.values():
                run.run_iperf3(tools, ends, args.load, reverse=False)
                run.run_iperf3(tools, ends, args.load, reverse=True)
                run.run_wrk(tools, ends, args.load, 50, 2, new_connection=True)
            moments.append((f"after {3 * args.load:g} s of load", figures(endpoints)))
        print(f"source: {args.source}")
        print(table(moments, args.markdown))

    return run.in_work_directory(args, "gotaxy-memory-", body)


if __name__ == "__main__":
    sys.exit(main())
