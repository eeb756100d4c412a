"""
End to end with iperf3, real processes on loopback: a tcp tunnel with
``transport.bandwidthLimit = "10MB"`` (10 MiB/s, as frp reads it) carries
10 MiB/s ± 5% each way, measured by iperf3 itself (``iperf3 -c`` uploads
through the tunnel, ``iperf3 -c -R`` downloads), once with the client
enforcing the limit (frp's default) and once with the server enforcing it;
at the same time an unlimited tunnel of the same client, to a second
``iperf3 -s``, carries clearly more than the limit.

What is measured is the receiving side's figures (``--get-server-output``
for an upload): a sender's count includes what sits in socket buffers.  The
first seconds (the bucket's burst, a tenth of a second's worth, and the
buffers filling) and the last interval (the sender has stopped, buffers
drain) are left out; the rest is MEASURED seconds of steady state.  The
figures are printed (``pytest -s``) and in the test's log.

Each direction has iperf3 servers of its own (four in all, one tunnel
each): an ``iperf3 -s`` serves one test at a time and refuses the next
("the server is busy") until the last one's streams have closed, which
through a limited tunnel is after its buffered bytes have drained.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from typing import Any, Dict, List

import pytest

from tests.e2e import Process, free_port, tunnel_port

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is not installed")]

MiB = 1024 * 1024
LIMIT = 10 * MiB
#: Seconds iperf3 runs; the first SKIP and the last one are not counted.
SECONDS = 14
SKIP = 3
MEASURED = SECONDS - SKIP - 1


def listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:``port`` (read from the kernel's table, without connecting)?"""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in list(table)[1:])


def iperf_server(procs: Any, name: str) -> int:
    # -J: its reports are JSON, which a client's --get-server-output then carries (the receiver's figures of an upload).
    port = free_port()
    process = Process(["iperf3", "-s", "-J", "-B", "127.0.0.1", "-p", str(port)], procs.workdir, name)
    procs.started.append(process)
    deadline = time.monotonic() + 20
    while not listening(port):
        assert process.running(), process.output()
        assert time.monotonic() < deadline, f"iperf3 -s did not listen on {port} within 20 s"
        time.sleep(0.05)
    return port


def iperf_client(port: int, reverse: bool) -> Dict[str, Any]:
    """One iperf3 run through a tunnel's public ``port``: its JSON report."""
    args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(SECONDS), "-i", "1", "--json",
            "--get-server-output"]
    if reverse:
        args.append("-R")
    done = subprocess.run(args, capture_output=True, text=True, timeout=SECONDS + 60)
    report: Dict[str, Any] = json.loads(done.stdout)
    assert "error" not in report, report["error"]
    return report


def received_rate(report: Dict[str, Any], reverse: bool) -> float:
    """Bytes a second the receiving end counted in the steady seconds."""
    if reverse:
        intervals = report["intervals"]  # the client received
    else:
        intervals = report["server_output_json"]["intervals"]  # the server did
    steady = [i["sum"] for i in intervals[SKIP:SKIP + MEASURED]]
    assert len(steady) == MEASURED, f"only {len(intervals)} intervals"
    return sum(s["bytes"] for s in steady) / sum(s["seconds"] for s in steady)


def total_rate(report: Dict[str, Any]) -> float:
    return float(report["end"]["sum_received"]["bits_per_second"]) / 8


@pytest.mark.parametrize("mode", ["client", "server"])
def test_iperf3_through_a_10MB_tunnel_measures_10MB_each_way_beside_an_unlimited_one(procs, tmp_path, mode):
    ways = {False: "upload", True: "download"}
    names = [f"{kind}-{way}" for way in ways.values() for kind in ("limited", "fast")]
    targets = {name: iperf_server(procs, f"iperf3-{name}") for name in names}
    server = procs.server()
    config = tmp_path / "client.toml"
    config.write_text("".join(
        f"""
[[proxies]]
name = "{name}"
localPort = {port}
""" + (f"""transport.bandwidthLimit = "10MB"
transport.bandwidthLimitMode = "{mode}"
""" if name.startswith("limited") else "")
        for name, port in targets.items()))
    client = procs.client(server, args=["--config", str(config)])
    ports = {name: tunnel_port(client, name) for name in names}

    figures: List[str] = []
    for reverse, way in ways.items():
        reports: Dict[str, Dict[str, Any]] = {}

        def run(kind: str) -> None:
            reports[kind] = iperf_client(ports[f"{kind}-{way}"], reverse)

        threads = [threading.Thread(target=run, args=(kind,)) for kind in ("limited", "fast")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 90)
        assert set(reports) == {"limited", "fast"}, "an iperf3 run did not finish"
        limited, fast = received_rate(reports["limited"], reverse), total_rate(reports["fast"])
        shown = "download (-R)" if reverse else "upload"
        figures.append(f"{shown}: limited {limited / MiB:.3f} MiB/s over {MEASURED} s "
                       f"({(limited / LIMIT - 1) * 100:+.2f}%), unlimited beside it {fast / MiB:.1f} MiB/s")
        print(f"bandwidthLimitMode = {mode}, {figures[-1]}")
        assert 0.95 * LIMIT <= limited <= 1.05 * LIMIT, figures[-1]
        assert fast > 2 * LIMIT, figures[-1]
    (tmp_path / "figures.txt").write_text("\n".join(figures) + "\n")
