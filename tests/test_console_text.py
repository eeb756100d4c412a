"""
The console's text (``gotaxy.console.text``): tables that fit the terminal,
units, and no control characters from outside reaching it.
"""

from __future__ import annotations

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

