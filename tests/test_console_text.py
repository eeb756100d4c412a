"""
The console's text (``gotaxy.console.text``): tables that fit the terminal,
units, and no control characters from outside reaching it.
"""

from __future__ import annotations

import attrs
from twisted.trial import unittest

from gotaxy.console.text import human_duration, table


class FormattingTests(unittest.TestCase):
    def test_table_fits_the_width_and_marks_cut_cells(self):
        rows = [["alice/" + "x" * 70, 6000, "127.0.0.1:8080", "up"], ["b/web", 6001, "[::1]:1", "down"]]
        text = table(["TUNNEL", "PORT", "LOCAL", "STATUS"], rows, width=60)
        lines = text.split("\n")
        self.assertEqual(len(lines), 3)
        self.assertTrue(all(len(line) <= 60 for line in lines), text)
        self.assertIn("~", lines[1])
        self.assertIn("127.0.0.1:8080", lines[1])
        self.assertTrue(lines[2].startswith("b/web "))

    def test_empty_table_says_none(self):
        self.assertEqual(table(["A", "B"], []).split("\n")[1], "(none)")

    def test_human_durations(self):
        self.assertEqual(human_duration(59), "59s")
        self.assertEqual(human_duration(3 * 3600 + 5 * 60), "3h 05m")
        self.assertEqual(human_duration(2 * 86400 + 3600), "2d 1h")


class PrintableTests(unittest.TestCase):
    def test_control_characters_never_reach_the_terminal(self):
        text = table(["CLIENT", "VERSION"], [["alice", "1.0\x1b[2J\x07"]])
        self.assertNotIn("\x1b", text)
        self.assertIn("1.0?[2J?", text)



class StatusTests(unittest.TestCase):
    @staticmethod
    def node(name: str, here: bool, clients: tuple, tunnels: int, rate: float, state: str = "up") -> object:
        from gotaxy.server.manage import NodeView

        return NodeView(node=name, state=state, here=here, host="h", pid=1, started_at=0.0, lease_until=60.0,
                        clients=clients, tunnels_up=tunnels, rate_in=rate, rate_out=rate / 2, traffic_at=None)

    def status(self, nodes: tuple) -> object:
        from gotaxy.server.manage import ServerStatus

        return ServerStatus(version="1.0", uptime=90.0, clients_online=2, clients_total=3, tunnels_up=3,
                            tunnels_total=4, bytes_in=2048, bytes_out=1024, rate_in=3 * 1024.0, rate_out=1536.0,
                            nodes=nodes)

    def test_one_node_prints_its_totals_as_before(self):
        from gotaxy.console.text import status_pairs

        text = status_pairs(self.status((self.node("a", True, ("alice", "bob"), 3, 3072.0),)))
        self.assertIn("clients      2 online, 3 known", text)
        self.assertNotIn("NODE", text)

    def test_several_nodes_print_the_cluster_totals_then_each_node(self):
        from gotaxy.console.text import render_watch, status_pairs

        nodes = (self.node("a", True, ("alice",), 1, 1024.0), self.node("b", False, ("bob",), 2, 2048.0),
                 self.node("c", False, (), 0, 0.0, state="down"))
        text = status_pairs(self.status(nodes))
        self.assertIn("nodes        2 up, 3 known", text)
        self.assertIn("clients      2 online on all nodes, 3 known", text)
        self.assertIn("tunnels      3 up on all nodes, 4 defined", text)
        self.assertIn("traffic in   3.0 KiB/s now on all nodes; 2.0 KiB through node a", text)
        rows = {line.split()[0] if not line.startswith("*") else line.split()[1]: line.split()
                for line in text.split("\n\n")[1].split("\n")[1:]}
        self.assertEqual(rows["a"][:5], ["*", "a", "up", "1", "1"])
        self.assertEqual(rows["b"][:4], ["b", "up", "1", "2"])
        self.assertEqual(rows["c"][:2], ["c", "down"])
        self.assertIn("nodes 2/3", render_watch(self.status(nodes), [], [], 0.0).split("\n")[0])

    def test_a_tunnel_held_by_another_node_says_whose_sample_its_rates_are(self):
        from gotaxy.console.text import tunnel_detail
        from gotaxy.server.manage import TunnelView

        view = TunnelView(client="alice", name="echo", type="tcp", local_addr="127.0.0.1:7", address=None,
                          status="up", reason=None, source="client", enabled=True, connections=0, opened=0,
                          bytes_in=0, bytes_out=0, rate_in=2048.0, rate_out=1024.0, node="a", traffic_at=0.0 + 3600)
        self.assertIn("in 2.0 KiB/s, out 1.0 KiB/s (sampled on a at 01:00:00 UTC)", tunnel_detail(view))
        live = attrs.evolve(view, traffic_at=None)
        self.assertNotIn("sample", tunnel_detail(live))
