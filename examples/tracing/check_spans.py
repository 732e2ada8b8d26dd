#!/usr/bin/env python3
"""Runs traced_echo and checks the spans its W3C JsonLinesTracer wrote (one JSON object a line).

usage: check_spans.py TRACED_ECHO

Every call appears twice, as the client's span and the server's, in the same trace, the
server's span a child of the client's; names are "Interface.method"; statuses say how each
call ended; a call whose caller started a span is that span's child.
"""
import json
import subprocess
import sys
import tempfile
import unittest

EXE = None
KEYS = {"span", "name", "trace_id", "span_id", "parent_span_id", "call_id", "one_way",
        "start_unix_ns", "duration_ns", "status"}


class SpansTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as f:
            r = subprocess.run([EXE, f.name], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            cls.lines = f.read().splitlines()
        cls.spans = [json.loads(line) for line in cls.lines]
        cls.client = [s for s in cls.spans if s["span"] == "client"]
        cls.server = [s for s in cls.spans if s["span"] == "server"]

    def test_every_line_is_one_complete_span(self):
        self.assertGreater(len(self.lines), 0)
        for s in self.spans:
            self.assertEqual(set(s), KEYS, s)
            self.assertRegex(s["trace_id"], r"^[0-9a-f]{32}$")  # W3C: 128 bits
            self.assertRegex(s["span_id"], r"^[0-9a-f]{16}$")
            self.assertNotEqual(s["span_id"], "0" * 16)
            self.assertGreaterEqual(s["duration_ns"], 0)
            self.assertGreater(s["start_unix_ns"], 1.5e18)  # after 2017: wall clock, in ns

    def test_the_client_spans_name_each_call_and_how_it_ended(self):
        got = [(s["name"], s["status"], s["one_way"]) for s in self.client]
        # ping() is no call: it has no span.
        self.assertEqual(got, [("Echo.echo", "ok", False), ("Echo.echo", "ok", False),
                               ("Echo.fail", "Application", False),
                               ("Echo.delay", "Cancelled", False), ("Echo.sink", "ok", True)])

    def test_each_server_span_is_the_child_of_its_client_span(self):
        self.assertEqual(len(self.server), len(self.client))
        by_span = {s["span_id"]: s for s in self.client}
        for srv in self.server:
            cli = by_span.get(srv["parent_span_id"])
            self.assertIsNotNone(cli, "server span with no client parent: %s" % srv)
            self.assertEqual(srv["trace_id"], cli["trace_id"])
            self.assertEqual(srv["name"], cli["name"])
            self.assertEqual(srv["call_id"], cli["call_id"])
            self.assertNotEqual(srv["span_id"], cli["span_id"])
        statuses = {s["name"]: s["status"] for s in self.server}
        self.assertEqual(statuses, {"Echo.echo": "ok", "Echo.fail": "Application",
                                    "Echo.delay": "Cancelled", "Echo.sink": "ok"})

    def test_a_new_call_starts_a_trace_and_a_call_in_a_span_is_its_child(self):
        first, second = self.client[0], self.client[1]
        self.assertIsNone(first["parent_span_id"])
        self.assertEqual(second["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertEqual(second["parent_span_id"], "00f067aa0ba902b7")
        roots = {s["trace_id"] for s in self.client if s["parent_span_id"] is None}
        self.assertEqual(len(roots), 4, "each call without a parent starts its own trace")


if __name__ == "__main__":
    EXE = sys.argv.pop(1)
    unittest.main(verbosity=2)
