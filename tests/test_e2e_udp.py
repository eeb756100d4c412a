"""
``type = "udp"`` end to end: real ``twistd`` server and client processes on
loopback, real UDP programs behind the tunnel.

* DNS: Debian's ``dnsmasq`` behind the tunnel, queried with ``dig`` through
  the public port: A and TXT records, and a TXT answer of about 1,400
  bytes that arrives whole (no truncation, no retry over TCP).
* ``iperf3 -u`` at 100 and 500 Mbit/s with 1,200-byte datagrams (its TCP
  control connection through a tcp tunnel on the same public port number,
  which is a separate claim): loss and jitter are printed, not asserted.
* 1,000 visitors, each from its own source port, each gets exactly its own
  replies.
* ``transport.bandwidthLimit`` on a udp tunnel: what is over it is dropped
  on the client and counted (reason ``bandwidth``), in its log and in the
  server's ``/metrics``.
* Idle associations end after the tunnel's (short) ``idleTimeout``, seen in
  ``/metrics``; an oversized datagram is dropped and counted; a reply too
  large is dropped on the client, logged there and counted by the server; a client that
  goes away makes the public port stop answering, and it answers again on
  the same port when the client is back.
* A TCP bulk transfer on the same client stays intact while its UDP tunnel
  is flooded beyond capacity (its throughput, with and without the flood,
  is printed; the flood and the udp service run in processes of their own),
  and the udp tunnel carries datagrams again after the flood.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from tests.e2e import free_port, stream_through, tunnel_port

pytestmark = pytest.mark.e2e

DIG = shutil.which("dig")
DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
IPERF3 = shutil.which("iperf3")


def udp_port(client, name: str, timeout: float = 20.0, start: int = 0) -> int:
    """The public UDP port of tunnel ``name``, from the client's ``up at udp HOST:PORT`` line."""
    match = client.wait_for(rf"tunnel {re.escape(name)} up at udp 127\.0\.0\.1:(\d+)", timeout, start)
    return int(match.group(1))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UdpEcho:
    """A UDP echo service on loopback, in a thread: each datagram comes back as it was (``prefix`` first)."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        self.received = 0
        self.closing = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.closing:
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                continue
            try:
                data, address = self.sock.recvfrom(65535)
            except OSError:
                return
            self.received += 1
            try:
                self.sock.sendto(self.prefix + data, address)
            except OSError:
                pass

    def close(self) -> None:
        self.closing = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    echo = UdpEcho(prefix=b"echo:")
    yield echo
    echo.close()


@pytest.fixture
def plain_echo() -> Iterator[UdpEcho]:
    echo = UdpEcho()
    yield echo
    echo.close()


def ask(port: int, payload: bytes, timeout: float = 5.0, sock: Optional[socket.socket] = None) -> Optional[bytes]:
    """Send one datagram to the public port; the reply, or None after ``timeout`` (raises on ICMP refusal)."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.send(payload)
        try:
            return s.recv(65535)
        except socket.timeout:
            return None
    finally:
        if own:
            s.close()


def ask_until_answered(port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Ask again (a datagram may be lost, UDP's way) until an answer comes or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = ask(port, payload, timeout=1.0)
        except ConnectionRefusedError:
            answer = None
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer through UDP port {port} within {timeout} s")


def metrics(web_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric(web_port: int, name: str, **labels: str) -> Optional[float]:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics(web_port).splitlines():
        if line.startswith(name + "{"):
            key, value = line.rsplit(" ", 1)
            have = ",".join(sorted(key[len(name) + 1:-1].split(",")))
            if have == wanted:
                return float(value)
    return None


def wait_for_metric(web_port: int, name: str, value: float, timeout: float = 30.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = metric(web_port, name, **labels)
        if seen == value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {seen}, not {value}, after {timeout} s")
        time.sleep(0.1)


def server_with_metrics(procs, tmp_path: Path, extra: str = "") -> Tuple[object, int]:
    web = free_port()
    config = tmp_path / "server.toml"
    config.write_text(f'metrics.exposure = "open"\n{extra}')
    server = procs.server("--config", str(config), "--web-port", str(web))
    return server, web


def client_file(tmp_path: Path, server, proxies: str, name: str = "client.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        f'serverAddr = "127.0.0.1"\nserverPort = {server.port}\nauth.token = "{server.token}"\n'
        f'transport.tls.fingerprint = "{server.fingerprint}"\n{proxies}'
    )
    return path


# -- DNS --------------------------------------------------------------------------------


@pytest.mark.skipif(not (DIG and DNSMASQ), reason="needs dnsmasq and dig (Debian's dnsmasq and bind9-dnsutils)")
@pytest.mark.timeout(120)
def test_dns_answers_through_the_tunnel_and_a_big_answer_arrives_whole(procs, tmp_path):
    dns_port = free_udp_port()
    chunks = [f"{i}" * 230 for i in range(6)]  # one TXT record of six 230-byte strings: an answer of ~1,440 bytes
    dnsmasq = subprocess.Popen(
        [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
         "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={dns_port}", "--user=root",
         "--edns-packet-max=1500",
         "--address=/a.gotaxy.test/192.0.2.7", "--txt-record=t.gotaxy.test,hello through the tunnel",
         "--txt-record=big.gotaxy.test," + ",".join(chunks)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        server = procs.server()
        client = procs.client(server, f"dns=udp:127.0.0.1:{dns_port}")
        public = udp_port(client, "dns")

        def dig(*args: str) -> str:
            # +ignore +notcp: a truncated answer would show as such, never be fetched again over TCP.
            result = subprocess.run([DIG, "@127.0.0.1", "-p", str(public), "+tries=5", "+time=2", "+ignore",
                                     "+notcp", *args], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        assert dig("+short", "a.gotaxy.test", "A").strip() == "192.0.2.7"
        assert dig("+short", "t.gotaxy.test", "TXT").strip() == '"hello through the tunnel"'
        big = dig("+bufsize=1500", "big.gotaxy.test", "TXT")
        flags = re.search(r";; flags: ([a-z ]+);", big).group(1).split()
        assert "tc" not in flags, big
        assert re.findall(r'"(\d+)"', big) == chunks
        size = int(re.search(r"MSG SIZE\s+rcvd: (\d+)", big).group(1))
        print(f"TXT answer of {size} bytes through the tunnel, whole")
        assert 1400 <= size <= 1500
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(10)


# -- iperf3 -u ----------------------------------------------------------------------------


@pytest.mark.skipif(not IPERF3, reason="needs iperf3 (Debian's iperf3)")
@pytest.mark.timeout(180)
def test_iperf3_udp_through_the_tunnel_reports_loss_and_jitter(procs):
    local = free_port()
    iperf = subprocess.Popen([IPERF3, "-s", "-B", "127.0.0.1", "-p", str(local)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        public = free_port()
        server = procs.server()
        # iperf3's control connection is TCP, its data UDP: two tunnels on one public port number.
        client = procs.client(server, f"ctl=tcp:127.0.0.1:{local}:{public}", f"data=udp:127.0.0.1:{local}:{public}")
        assert tunnel_port(client, "ctl") == public and udp_port(client, "data") == public
        for rate in ("100M", "500M"):
            deadline = time.monotonic() + 30
            while True:
                result = subprocess.run([IPERF3, "-c", "127.0.0.1", "-p", str(public), "-u", "-b", rate, "-l",
                                         "1200", "-t", "3", "-J"], capture_output=True, text=True, timeout=60)
                report = json.loads(result.stdout)
                # iperf3's server takes a moment to finish the last test (its control connection closing).
                if "busy" not in report.get("error", "") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert "error" not in report, report.get("error")
            total = report["end"]["sum"]
            print(f"iperf3 -u -b {rate} -l 1200: {total['bits_per_second'] / 1e6:.1f} Mbit/s received, "
                  f"lost {total['lost_percent']:.2f} % ({total['lost_packets']} of {total['packets']}), "
                  f"jitter {total['jitter_ms']:.3f} ms")
            assert total["packets"] > 0 and total["lost_packets"] < total["packets"]
    finally:
        iperf.terminate()
        iperf.wait(10)


# -- many visitors --------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_thousand_visitors_each_get_exactly_their_own_replies(procs, udp_echo):
    server = procs.server()
    client = procs.client(server, f"echo=udp:127.0.0.1:{udp_echo.port}")
    public = udp_port(client, "echo")
    ask_until_answered(public, b"warm-up")
    visitors: List[socket.socket] = []
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            visitors.append(s)
        by_fd = {s.fileno(): n for n, s in enumerate(visitors)}
        answers: Dict[int, List[bytes]] = {n: [] for n in range(len(visitors))}
        poller = select.poll()
        for s in visitors:
            poller.register(s, select.POLLIN)
        for attempt in range(5):  # a datagram may be lost on a busy machine: ask the silent ones again
            silent = [n for n, got in answers.items() if not got]
            if not silent:
                break
            for batch in range(0, len(silent), 100):
                for n in silent[batch:batch + 100]:
                    visitors[n].sendto(f"visitor {n}".encode(), ("127.0.0.1", public))
                deadline = time.monotonic() + 3.0
                waiting = set(silent[batch:batch + 100])
                while waiting and time.monotonic() < deadline:
                    for fd, _ in poller.poll(100):
                        n = by_fd[fd]
                        try:
                            while True:
                                answers[n].append(visitors[n].recv(65535))
                        except BlockingIOError:
                            pass
                        waiting.discard(n)
        silent = [n for n, got in answers.items() if not got]
        assert not silent, f"{len(silent)} visitors got no answer, e.g. {silent[:5]}"
        for n, got in answers.items():
            assert set(got) == {f"echo:visitor {n}".encode()}, (n, got[:3])  # only its own, never another's
        print(f"1,000 visitors answered; the echo service saw {udp_echo.received} datagrams")
    finally:
        for s in visitors:
            s.close()


# -- idle expiry, oversized datagrams, a client that goes away ------------------------------


@pytest.mark.timeout(120)
def test_idle_associations_end_after_the_timeout(procs, tmp_path, udp_echo):
    server, web = server_with_metrics(procs, tmp_path)
    path = client_file(tmp_path, server, f'[[proxies]]\nname = "echo"\ntype = "udp"\nlocalPort = {udp_echo.port}\n'
                                         "idleTimeout = 2\n")
    client = procs.client(server, args=["--config", str(path)])
    public = udp_port(client, "echo")
    labels = {"client": "default", "tunnel": "echo"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as visitor:
        visitor.bind(("127.0.0.1", 0))
        assert ask(public, b"one", sock=visitor) == b"echo:one"
        assert metric(web, "gotaxy_tunnel_connections_open", **labels) == 1.0
        started = time.monotonic()
        wait_for_metric(web, "gotaxy_tunnel_connections_open", 0.0, **labels)  # ended on both sides, by itself
        took = time.monotonic() - started
        print(f"an idle association with idleTimeout = 2 ended after {took:.1f} s")
        assert took >= 1.5
        # The same visitor again: a new association, and its answer.
        assert ask(public, b"two", sock=visitor) == b"echo:two"
        assert metric(web, "gotaxy_tunnel_connections_total", **labels) == 2.0


@pytest.mark.timeout(120)
def test_oversized_datagrams_are_dropped_and_counted_and_the_port_follows_the_client(procs, tmp_path, plain_echo):
    server, web = server_with_metrics(procs, tmp_path)
    client = procs.client(server, f"echo=udp:127.0.0.1:{plain_echo.port}")
    public = udp_port(client, "echo")
    labels = {"client": "default", "tunnel": "echo"}
    assert ask_until_answered(public, b"x" * 1500) == b"x" * 1500  # udpPacketSize (1500) passes whole
    assert ask(public, b"y" * 1501, timeout=1.0) is None  # one byte more: dropped, not truncated
    assert metric(web, "gotaxy_tunnel_datagrams_dropped_total", reason="too_large", **labels) == 1.0
    assert plain_echo.received == 1
    assert metric(web, "gotaxy_tunnel_datagrams_total", direction="in", **labels) == 1.0

    # The client goes away: the public port stops answering (ICMP port unreachable, or silence).
    client.kill()
    server.wait_for(r"default.*(disconnected|offline|lost)", 30)
    deadline = time.monotonic() + 30
    while True:
        try:
            if ask(public, b"anyone?", timeout=0.5) is None:
                pass
        except ConnectionRefusedError:
            break  # the port is closed
        if time.monotonic() > deadline:
            raise AssertionError("the public UDP port kept answering after its client went away")
    # It comes back with the client, on the same port.
    again = procs.client(server, f"echo=udp:127.0.0.1:{plain_echo.port}", name="client")
    assert udp_port(again, "echo") == public
    assert ask_until_answered(public, b"back") == b"back"


@pytest.mark.timeout(120)
def test_replies_too_large_are_dropped_on_the_client_logged_and_shown_by_the_server(procs, tmp_path, udp_echo):
    server, web = server_with_metrics(procs, tmp_path)
    client = procs.client(server, f"echo=udp:127.0.0.1:{udp_echo.port}")
    public = udp_port(client, "echo")
    labels = {"client": "default", "tunnel": "echo"}
    assert ask_until_answered(public, b"hi") == b"echo:hi"
    # 1,496 bytes pass udpPacketSize (1500); the echo's reply, 1,501 bytes, does not: the client drops it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as visitor:
        visitor.bind(("127.0.0.1", 0))
        assert ask(public, b"x" * 1496, timeout=1.0, sock=visitor) is None
    client.wait_for(r"udp tunnel echo: 1 datagram\(s\) dropped on this client in the last \d+ s "
                    r"\(1 too large, 0 queue full, 0 no slot, 0 over the bandwidth limit\)", 30)
    wait_for_metric(web, "gotaxy_tunnel_client_datagrams_dropped_total", 1.0, reason="too_large", **labels)
    assert metric(web, "gotaxy_tunnel_datagrams_dropped_total", reason="too_large", **labels) == 0.0
    assert udp_echo.received == 2


@pytest.mark.timeout(120)
def test_a_udp_bandwidth_limit_drops_and_counts_what_is_over_it(procs, tmp_path, plain_echo):
    server, web = server_with_metrics(procs, tmp_path)
    path = client_file(tmp_path, server, f'[[proxies]]\nname = "capped"\ntype = "udp"\nlocalPort = {plain_echo.port}\n'
                                         'transport.bandwidthLimit = "100KB"\n')  # bandwidthLimitMode "client"
    client = procs.client(server, args=["--config", str(path)])
    public = udp_port(client, "capped")
    labels = {"client": "default", "tunnel": "capped"}
    assert ask_until_answered(public, b"hi") == b"hi"
    # 2,000 datagrams of 1,000 bytes in about a second: twenty times the limit.
    sent, started = 0, time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as visitor:
        for n in range(2000):
            visitor.sendto(b"%06d" % n + bytes(994), ("127.0.0.1", public))
            sent += 1
            if n % 100 == 99:
                time.sleep(max(0.0, started + (n + 1) / 2000 - time.monotonic()))
    took = time.monotonic() - started
    client.wait_for(r"udp tunnel capped: \d+ datagram\(s\) dropped on this client in the last \d+ s "
                    r"\(0 too large, \d+ queue full, 0 no slot, [1-9]\d* over the bandwidth limit\)", 30)
    deadline = time.monotonic() + 30
    while not metric(web, "gotaxy_tunnel_client_datagrams_dropped_total", reason="bandwidth", **labels):
        assert time.monotonic() < deadline, "the client's bandwidth drops never reached the server"
        time.sleep(0.2)
    dropped = metric(web, "gotaxy_tunnel_client_datagrams_dropped_total", reason="bandwidth", **labels)
    reached = plain_echo.received - 1
    print(f"udp with transport.bandwidthLimit = 100KB: {sent} datagrams of 1,000 bytes in {took:.1f} s, "
          f"{reached} reached the service ({reached * 1000 / took / 1024:.0f} KiB/s), {dropped:.0f} dropped "
          f"as over the limit")
    assert 0 < reached < sent // 2 and dropped > 0


# -- UDP does not stall TCP ------------------------------------------------------------------

#: A UDP sink in a process of its own: reads and forgets, prints its port first.
SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    s.recv(65535)
"""

#: A flood in a process of its own: 1,200-byte datagrams at RATE a second to PORT, in 5 ms bursts, until killed.
FLOOD = """
import socket, sys, time
port, rate = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
datagram, burst, sent = bytes(1200), rate // 200, 0
start = time.monotonic()
while True:
    for _ in range(burst):
        try:
            s.sendto(datagram, ("127.0.0.1", port))
            sent += 1
        except BlockingIOError:
            break
    ahead = start + sent / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
"""

#: Datagrams a second the flood offers: about 400 Mbit/s, beyond what a udp tunnel carries here.
FLOOD_RATE = 40000


@pytest.mark.timeout(240)
def test_a_tcp_transfer_stays_intact_while_the_udp_tunnel_is_flooded(procs, tmp_path, echo):
    import sys

    # The sink and the flood run in processes of their own: threads of this
    # process would take turns with the transfer's own reading and writing.
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    flood_process: Optional[subprocess.Popen] = None
    try:
        sink_port = int(sink.stdout.readline())
        server, web = server_with_metrics(procs, tmp_path)
        client = procs.client(server, f"bulk=tcp:127.0.0.1:{echo.port}", f"flood=udp:127.0.0.1:{sink_port}")
        bulk, flood = tunnel_port(client, "bulk"), udp_port(client, "flood")
        labels = {"client": "default", "tunnel": "flood"}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the udp tunnel carries datagrams
            probe.sendto(b"ready", ("127.0.0.1", flood))
            wait_for_metric(web, "gotaxy_tunnel_datagrams_total", 1.0, direction="in", **labels)
        size = 64 << 20

        started = time.monotonic()
        sent, received = stream_through(bulk, size)
        alone = size / (time.monotonic() - started)
        assert sent == received

        flood_process = subprocess.Popen([sys.executable, "-c", FLOOD, str(flood), str(FLOOD_RATE)])
        deadline = time.monotonic() + 30
        while (metric(web, "gotaxy_tunnel_datagrams_total", direction="in", **labels) or 0) < 1000:
            assert time.monotonic() < deadline, "the flood never reached the tunnel"
            time.sleep(0.1)
        started = time.monotonic()
        sent, received = stream_through(bulk, size)
        during = size / (time.monotonic() - started)
        carried = metric(web, "gotaxy_tunnel_datagrams_total", direction="in", **labels)
        dropped = metric(web, "gotaxy_tunnel_datagrams_dropped_total", reason="queue_full", **labels)
        assert sent == received  # intact, byte for byte
        print(f"TCP through the tunnel: {alone / 2**20:.0f} MiB/s alone, {during / 2**20:.0f} MiB/s while "
              f"{FLOOD_RATE:,} datagrams a second flooded the udp tunnel ({during / alone:.0%}); the tunnel "
              f"carried {carried:.0f} datagrams and dropped {dropped:.0f} as queue_full")
        flood_process.kill()
        flood_process.wait(10)
        # The client's connection is still up: the udp tunnel carries a datagram after the flood.
        deadline = time.monotonic() + 30
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            while metric(web, "gotaxy_tunnel_datagrams_total", direction="in", **labels) == carried:
                assert time.monotonic() < deadline, "the udp tunnel carried nothing after the flood"
                probe.sendto(b"after", ("127.0.0.1", flood))
                time.sleep(0.2)
    finally:
        if flood_process is not None and flood_process.poll() is None:
            flood_process.kill()
            flood_process.wait(10)
        sink.kill()
        sink.wait(10)
