#!/usr/bin/env python3
"""zcrpc-info, zcrpc-ping and zcrpc-stat run end to end against a real server process.

Usage: tools_test.py SERVER INFO PING STAT OPERATIONS_MD
       (paths of zcrpc-test-server, the tools, and docs/operations.md)

Starts zcrpc-test-server on shm and tcp (and one without the stats endpoint), drives
traffic with its --client mode, runs each tool and checks what it prints. Every server is
killed on every path.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SERVER, INFO, PING, STAT, OPERATIONS_MD = sys.argv[1:6]
ECHO_IFACE = "0xcfcd81b639a97e98"
TIMEOUT = 30


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZCRPC_")}
    env.update(extra)
    return env


def run(args, env=None, timeout=TIMEOUT):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env or clean_env(), timeout=timeout)


def run_with_config(args, toml, **env):
    """Runs args with ZCRPC_CONFIG naming a file that holds `toml` (and `env`); returns
    the result and the file's name (gone by then)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml)
    try:
        return run(args, env=clean_env(ZCRPC_CONFIG=f.name, **env)), f.name
    finally:
        os.unlink(f.name)


class Server:
    """zcrpc-test-server on the given endpoints; .endpoints are as it listens."""

    def __init__(self, *endpoints, stats=True, env=None):
        args = [SERVER] + ([] if stats else ["--no-stats"]) + list(endpoints)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env or clean_env())
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.stop()
            raise RuntimeError("test server did not start: %r %s" % (line, self.proc.stderr.read()))
        self.endpoints = line[1:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def make_pki(dir):
    """A CA and a server certificate it signed (CN=zcrpc-info-test, IP:127.0.0.1), made
    now with the openssl command: no key is ever committed. Returns (ca, cert, key)."""
    ca, ca_key = os.path.join(dir, "ca.pem"), os.path.join(dir, "ca.key")
    cert, key, csr = (os.path.join(dir, n) for n in ("server.pem", "server.key", "server.csr"))
    ext = os.path.join(dir, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    for cmd in (["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=zcrpc info test CA"],
                ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", key, "-out", csr, "-subj", "/CN=zcrpc-info-test"],
                ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-out", cert, "-days", "2", "-extfile", ext]):
        r = subprocess.run(["openssl"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=TIMEOUT)
        if r.returncode != 0:
            raise RuntimeError("openssl %s: %s" % (cmd[0], r.stderr))
    return ca, cert, key


def unique(what):
    return "toolstest-%s-%d" % (what, os.getpid())


class ToolsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.shm_name = unique("srv")
        cls.server = Server("shm://" + cls.shm_name, "tcp://127.0.0.1:0")
        cls.shm, cls.tcp = cls.server.endpoints
        assert cls.shm == "shm://" + cls.shm_name, cls.server.endpoints
        assert re.match(r"tcp://127\.0\.0\.1:\d+$", cls.tcp), cls.server.endpoints

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def client(self, endpoint, calls, fails):
        r = run([SERVER, "--client", str(calls), str(fails), endpoint])
        self.assertEqual(r.returncode, 0, r.stderr)

    # ---------------------------------------------------------------- zcrpc-info

    def test_info_settings_reference(self):
        r = run([INFO, "--settings"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("| setting | type | default | environment | meaning |", r.stdout)
        for name, env in [("ring_bytes", "ZCRPC_RING_BYTES"), ("wait_mode", "ZCRPC_WAIT_MODE"),
                          ("transports", "ZCRPC_TRANSPORTS"), ("rdma_gid_index", "ZCRPC_RDMA_GID_INDEX")]:
            self.assertRegex(r.stdout, r"\| `%s` \|.*\| `%s` \|" % (name, env))

    def test_docs_carry_the_current_settings_reference(self):
        r = run([INFO, "--settings"])
        with open(OPERATIONS_MD) as f:
            doc = f.read()
        m = re.search(r"<!-- settings-reference:begin -->\n(.*)<!-- settings-reference:end -->", doc, re.S)
        self.assertIsNotNone(m, "no settings reference markers in docs/operations.md")
        self.assertEqual(m.group(1), r.stdout,
                         "docs/operations.md is out of date: paste `zcrpc-info --settings` between the markers")

    def test_info_effective_settings_name_their_source(self):
        r, path = run_with_config([INFO], 'ring_bytes = "64KiB"\nwindow = 8\n', ZCRPC_WINDOW="128")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"transports compiled in: shm, tcp")
        self.assertIn("RDMA devices:", r.stdout)
        # Sizes as people write them.
        self.assertRegex(r.stdout, r"ring_bytes\s+64KiB\s+file\s+%s:1 key ring_bytes" % re.escape(path))
        self.assertRegex(r.stdout, r"arena_bytes\s+136MiB\s+default")
        self.assertNotIn("ignored (warnings)", r.stdout)
        self.assertRegex(r.stdout, r"window\s+128\s+environment\s+ZCRPC_WINDOW")
        self.assertRegex(r.stdout, r"wait_mode\s+spin-then-sleep\s+default\s+default")

    def test_info_lists_the_transports_with_what_they_can_do(self):
        r = run([INFO], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"\n  shm   available\n.*this host only, shared memory, gathers referenceData from 1024 B\n"
                                   r"\s+settings: the connection settings, arena_bytes")
        self.assertRegex(r.stdout, r"\n  tcp   available\n.*other hosts, gathers referenceData from 16384 B\n"
                                   r"\s+settings: the connection settings, token, allow_plaintext_token, tls, tls_cert_file, "
                                   r"tls_key_file, tls_ca_file, .*, max_connections, dead_peer_timeout\n")
        self.assertRegex(r.stdout, r"\n  rdma  (available|unavailable: .+)\n")

    def test_info_shows_what_the_configuration_ignored(self):
        r, path = run_with_config([INFO], '[zcprc]\nwindow = 8\n[zcrpc]\nspin_time = "10us"\n',
                                  ZCRPC_RING_BYTE="64KiB")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ignored (warnings):", r.stdout)
        self.assertIn("ZCRPC_RING_BYTE is set but is not a zcrpc setting (ignored); "
                      "did you mean ZCRPC_RING_BYTES?", r.stdout)
        self.assertIn("%s:1: table [zcprc] ignored: zcrpc reads only [zcrpc] in this file; "
                      "did you mean zcrpc?" % path, r.stdout)
        self.assertRegex(r.stdout, r"window\s+64\s+default")
        self.assertEqual(r.stderr, "", "printed once, not logged as well")

    def test_info_bad_environment_names_the_variable(self):
        r = run([INFO], env=clean_env(ZCRPC_RING_BYTES="3000"))
        self.assertEqual(r.returncode, 2)
        self.assertIn("ZCRPC_RING_BYTES: expected a power of two", r.stderr)

    def test_info_transport_choice_with_reasons(self):
        missing = "shm://" + unique("missing")
        rdma = "rdma://127.0.0.1:1"
        r = run([INFO, self.tcp, missing, self.shm, rdma])
        self.assertEqual(r.returncode, 0, r.stderr)
        out = r.stdout
        self.assertIn("transport choice (preference: shm,rdma,tcp,capnp+unix,capnp), each endpoint tried:", out)
        # With who answered, as the transport authenticated it (shm: the server's credentials).
        self.assertRegex(out, r"%s\s+shm\s+chosen \(connected in [\d.]+ ms; server: shm pid \d+, pid %d uid %d "
                         r"gid \d+\)" % (re.escape(self.shm), self.server.proc.pid, os.geteuid()))
        self.assertRegex(out, r"%s\s+shm\s+fails: no shm listener @zcrpc/%s" %
                         (re.escape(missing), unique("missing")))
        # Every other endpoint says whether it would work too, not only the chosen one.
        self.assertRegex(out, r"%s\s+tcp\s+works too \(connected in [\d.]+ ms; server: tcp 127\.0\.0\.1:\d+\); "
                         r"an earlier preference is chosen" % re.escape(self.tcp))
        self.assertRegex(out, r"%s\s+rdma\s+fails: (rdma transport not compiled in|no RDMA device)" %
                         re.escape(rdma))
        self.assertIn("would connect to %s over shm" % self.shm, out)

        # tcp counts as chosen only when it connects: a refused address that resolves fails.
        refused = "tcp://127.0.0.1:1"
        r = run([INFO, refused, self.tcp], env=clean_env(ZCRPC_TRANSPORTS="tcp"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"%s\s+tcp\s+fails: connect failed: .*refused" % re.escape(refused))
        self.assertRegex(r.stdout, r"%s\s+tcp\s+chosen" % re.escape(self.tcp))
        self.assertIn("would connect to %s over tcp" % self.tcp, r.stdout)
        # --no-connect plans as Context::choose() does: an address that resolves is taken.
        r = run([INFO, "--no-connect", refused, self.tcp], env=clean_env(ZCRPC_TRANSPORTS="tcp"))
        self.assertIn("planned without connecting", r.stdout)
        self.assertRegex(r.stdout, r"%s\s+tcp\s+chosen" % re.escape(refused))

        r = run([INFO, self.shm, self.tcp, "http://example.com:80"], env=clean_env(ZCRPC_TRANSPORTS="tcp"))
        self.assertRegex(r.stdout, r"%s\s+shm\s+skipped: transport 'shm' is not in the preference list" %
                         re.escape(self.shm))
        self.assertRegex(r.stdout, r"http://example.com:80\s+http\s+skipped: unknown scheme 'http'")
        self.assertIn("would connect to %s over tcp" % self.tcp, r.stdout)

        r = run([INFO, "tcp://no-such-host.invalid:1"])
        self.assertEqual(r.returncode, 1, "no endpoint works: exit status 1")
        self.assertIn("does not resolve", r.stdout)
        self.assertIn("no endpoint works", r.stdout)

    def test_info_shows_tls_and_the_servers_certificate(self):
        with tempfile.TemporaryDirectory() as dir:
            ca, cert, key = make_pki(dir)
            env = clean_env(ZCRPC_TLS="on", ZCRPC_TLS_CERT_FILE=cert, ZCRPC_TLS_KEY_FILE=key)
            with Server("tcp://127.0.0.1:0", env=env) as server:
                endpoint = server.endpoints[0]
                r = run([INFO, endpoint], env=clean_env(ZCRPC_TLS="on", ZCRPC_TLS_CA_FILE=ca,
                                                        ZCRPC_TRANSPORTS="tcp"))
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertRegex(r.stdout, r"%s\s+tcp\s+chosen \(connected in [\d.]+ ms; server: tcp "
                                 r"127\.0\.0\.1:\d+, TLSv1\.3 TLS_\w+.*, certificate CN=zcrpc-info-test\)" %
                                 re.escape(endpoint))
                # Without the CA the server's certificate is not trusted: it fails and says so.
                r = run([INFO, endpoint], env=clean_env(ZCRPC_TLS="on", ZCRPC_TRANSPORTS="tcp"))
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertRegex(r.stdout, r"fails: .*certificate")

    def test_info_warns_about_a_token_in_clear_text(self):
        r = run([INFO], env=clean_env(ZCRPC_TOKEN="s3cret", ZCRPC_ALLOW_PLAINTEXT_TOKEN="true"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("WARNING: allow_plaintext_token=true and tls is off: the tcp access token crosses "
                      "the network in clear text", r.stdout)
        r = run([INFO], env=clean_env(ZCRPC_TOKEN="s3cret", ZCRPC_ALLOW_PLAINTEXT_TOKEN="true", ZCRPC_TLS="on"))
        self.assertNotIn("WARNING", r.stdout)

    # ---------------------------------------------------------------- zcrpc-ping

    def check_ping_output(self, out, endpoint, count):
        pongs = re.findall(r"pong from %s: seq=(\d+) time=([\d.]+) us" % re.escape(endpoint), out)
        self.assertEqual([int(s) for s, _ in pongs], list(range(1, count + 1)), out)
        self.assertTrue(all(float(t) > 0 for _, t in pongs), out)
        self.assertIn("%d sent, %d received, 0.0%% loss" % (count, count), out)
        m = re.search(r"rtt min/avg/p50/p99/max = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) us", out)
        self.assertIsNotNone(m, out)
        lo, avg, p50, p99, hi = map(float, m.groups())
        self.assertTrue(0 < lo <= p50 <= p99 <= hi and lo <= avg <= hi, out)

    def test_ping_shm_and_tcp(self):
        for endpoint in (self.shm, self.tcp):
            r = run([PING, "-c", "5", "-i", "0.01", endpoint])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("PING " + endpoint, r.stdout)
            self.check_ping_output(r.stdout, endpoint, 5)

    def test_ping_stops_at_ctrl_c_with_statistics(self):
        p = subprocess.Popen([PING, "-i", "0.02", self.shm], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=clean_env())
        try:
            deadline = time.time() + 10
            seen = ""
            while time.time() < deadline and seen.count("pong from") < 3:
                seen += p.stdout.readline()
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err)
        out = seen + out
        self.assertRegex(out, r"--- %s ping statistics ---" % re.escape(self.shm))
        m = re.search(r"(\d+) sent, (\d+) received", out)
        self.assertGreaterEqual(int(m.group(2)), 3, out)

    def test_ping_health_checks(self):
        with Server("shm://" + unique("health")) as s:
            ep = s.endpoints[0]
            r = run([PING, "--health", "-c", "2", "-i", "0", ep])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"health of the server from %s: seq=1 serving time=[\d.]+ us" % re.escape(ep))
            self.assertIn("2 sent, 2 received", r.stdout)
            r = run([PING, "--health", "Echo", "-c", "1", ep])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("health of 'Echo' from %s: seq=1 serving" % ep, r.stdout)
            r = run([PING, "--health", "Inventory", "-c", "1", ep])
            self.assertEqual(r.returncode, 3, "answered, but not serving: exit status 3")
            self.assertIn("seq=1 service unknown", r.stdout)
            # Up but not serving (the server's SIGUSR1 sets it so).
            s.proc.send_signal(signal.SIGUSR1)
            deadline = time.time() + 5
            while True:
                r = run([PING, "--health", "Echo", "-c", "1", ep])
                if r.returncode != 0 or time.time() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(r.returncode, 3, r.stdout)
            self.assertIn("seq=1 not serving", r.stdout)
            s.proc.send_signal(signal.SIGUSR2)
        with Server("shm://" + unique("nohealth"), stats=False) as s:
            r = run([PING, "--health", "-c", "1", s.endpoints[0]])
            self.assertEqual(r.returncode, 1)
            self.assertIn("does not serve health checks (Server::enableHealth())", r.stderr)

    def test_ping_unreachable_server(self):
        r = run([PING, "-c", "1", "shm://" + unique("nobody")])
        self.assertEqual(r.returncode, 2)
        self.assertIn("no shm listener", r.stderr)

    # ---------------------------------------------------------------- zcrpc-stat

    def echo_row(self, methods, method_id):
        for m in methods:
            if m["interface_id"] == ECHO_IFACE and m["method_id"] == method_id:
                return m
        self.fail("no %s.%d in %s" % (ECHO_IFACE, method_id, json.dumps(methods)))

    def test_stat_counts_calls_errors_and_latency(self):
        with Server("shm://" + unique("stat")) as s:
            self.client(s.endpoints[0], 40, 3)
            self.client(s.endpoints[0], 10, 0)

            # The server notices the clients' connections closing within a liveness period.
            # Every zcrpc-stat run is a connection too: once all is seen, only the asking
            # one is open and every other one (two clients, earlier stat runs) is closed.
            conns = re.compile(r"connections (\d+) open, (\d+) opened, (\d+) closed")
            deadline = time.time() + 5
            while True:
                r = run([STAT, "--once", s.endpoints[0]])
                self.assertEqual(r.returncode, 0, r.stderr)
                m = conns.search(r.stdout)
                self.assertIsNotNone(m, r.stdout)
                settled = int(m.group(1)) == 1 and int(m.group(3)) == int(m.group(2)) - 1
                if settled or time.time() > deadline:
                    break
                time.sleep(0.05)
            self.assertRegex(r.stdout, r"server pid %d on %s" % (s.proc.pid, re.escape(s.endpoints[0])))
            self.assertTrue(settled, r.stdout)
            self.assertGreaterEqual(int(m.group(2)), 3, r.stdout)  # two clients and this run
            self.assertRegex(r.stdout, r"METHOD\s+CALLS\s+CALLS/S\s+ERRORS")
            # Methods by the names capnpc-zcrpc generated into the service.
            self.assertRegex(r.stdout, r"\nEcho\.echo\s+50\s+-\s+0\s")
            self.assertRegex(r.stdout, r"\nEcho\.fail\s+3\s+-\s+3\s.*Application:3")
            self.assertNotIn(ECHO_IFACE, r.stdout)

            r = run([STAT, "--once", "--json", s.endpoints[0]])
            self.assertEqual(r.returncode, 0, r.stderr)
            snap = json.loads(r.stdout)
            self.assertEqual(snap["pid"], s.proc.pid)
            self.assertEqual(snap["endpoints"], s.endpoints)
            self.assertNotIn("connections", snap)
            echo = self.echo_row(snap["methods"], 0)
            self.assertEqual(echo["name"], "Echo.echo")
            self.assertEqual(echo["calls"], 50)
            self.assertEqual(echo["errors"], {})
            self.assertGreater(echo["request_bytes"], 50 * 64)
            lat = echo["latency_ns"]
            self.assertEqual(lat["count"], 50)
            self.assertTrue(0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"], lat)
            fail = self.echo_row(snap["methods"], 4)
            self.assertEqual(fail["errors"], {"Application": 3})

    def test_stat_counts_calls_given_up_apart_from_failures(self):
        with Server("shm://" + unique("giveup")) as s:
            ep = s.endpoints[0]
            r = run([SERVER, "--client", "5", "1", "--give-up", "2", ep])
            self.assertEqual(r.returncode, 0, r.stderr)
            # The deferred delay calls end on the server at their 300 ms, after the cancels.
            deadline = time.time() + 10
            while True:
                r = run([STAT, "--once", "--json", ep])
                self.assertEqual(r.returncode, 0, r.stderr)
                delay = [m for m in json.loads(r.stdout)["methods"] if m["name"] == "Echo.delay"]
                if (delay and delay[0]["cancelled"] == 2) or time.time() > deadline:
                    break
                time.sleep(0.05)
            self.assertEqual(len(delay), 1, r.stdout)
            self.assertEqual((delay[0]["failures"], delay[0]["cancelled"], delay[0]["expired"]),
                             (0, 2, 0), "given up (cancelled, or past the deadline) is not a failure")
            self.assertEqual(delay[0]["errors"], {"Cancelled": 2})
            fail = [m for m in json.loads(r.stdout)["methods"] if m["name"] == "Echo.fail"][0]
            self.assertEqual((fail["failures"], fail["cancelled"]), (1, 0))
            r = run([STAT, "--once", ep])
            self.assertRegex(r.stdout, r"METHOD\s+CALLS\s+CALLS/S\s+ERRORS\s+CANCEL\s+EXPIRED\s+.*ERRORS BY KIND")
            self.assertRegex(r.stdout, r"\nEcho\.delay\s+2\s+-\s+0\s+2\s+0\s")
            self.assertRegex(r.stdout, r"\nEcho\.fail\s+1\s+-\s+1\s+0\s+0\s.*Application:1")

    def test_stat_percentiles_are_per_interval(self):
        with Server("shm://" + unique("interval")) as s:
            ep = s.endpoints[0]
            self.client(ep, 5, 0)
            p = subprocess.Popen([STAT, "--json", "-n", "2", "-i", "2", ep], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=clean_env())
            try:
                first = json.loads(p.stdout.readline())
                self.client(ep, 20, 0)  # within the interval
                out, err = p.communicate(timeout=20)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.assertEqual(p.returncode, 0, err)
            second = json.loads(out.splitlines()[0])
            self.assertNotIn("interval", self.echo_row(first["methods"], 0), "no interval before a second snapshot")
            echo = self.echo_row(second["methods"], 0)
            self.assertEqual(echo["calls"], 25)
            self.assertEqual(echo["latency_ns"]["count"], 25, "cumulative since start")
            self.assertEqual(echo["interval"]["calls"], 20)
            self.assertEqual(echo["interval"]["latency_ns"]["count"], 20, "only this interval's calls")
            self.assertGreater(echo["interval"]["latency_ns"]["p50"], 0)
            self.assertGreater(echo["interval"]["seconds"], 1.5)
            r = run([STAT, "-n", "2", "-i", "0.2", ep])
            self.assertIn("latency over the last 0.2 s", r.stdout)
            r = run([STAT, "-n", "2", "-i", "0.2", "--cumulative", ep])
            self.assertNotIn("latency over the last", r.stdout)
            self.assertIn("latency since the server started", r.stdout)

    def test_stat_live_snapshots_rates_and_connections(self):
        with Server("shm://" + unique("live")) as s:
            self.client(s.endpoints[0], 5, 0)
            r = run([STAT, "--json", "-n", "3", "-i", "0.2", "--connections", s.endpoints[0]])
            self.assertEqual(r.returncode, 0, r.stderr)
            snaps = [json.loads(line) for line in r.stdout.splitlines()]
            self.assertEqual(len(snaps), 3)
            self.assertNotIn("calls_per_s", self.echo_row(snaps[0]["methods"], 0))
            self.assertEqual(self.echo_row(snaps[2]["methods"], 0)["calls_per_s"], 0.0)
            admin = [m for m in snaps[2]["methods"] if m["name"] == "zcrpc.admin.Admin.stats"]
            self.assertEqual(admin[0]["calls"], 3)
            self.assertGreater(admin[0]["calls_per_s"], 0)
            # Its own connection made the admin calls and nothing else.
            name = "zcrpc.admin.Admin.stats"
            own = [c for c in snaps[2]["connections"] if any(m["name"] == name for m in c["methods"])]
            self.assertEqual(len(own), 1, snaps[2]["connections"])
            self.assertEqual([(m["name"], m["calls"]) for m in own[0]["methods"]], [(name, 3)])
            self.assertTrue(own[0]["endpoint"].startswith("shm://"), own[0])

    def test_stat_tcp_table_and_ctrl_c(self):
        p = subprocess.Popen([STAT, "-i", "0.1", self.tcp], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=clean_env())
        try:
            time.sleep(0.5)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err)
        self.assertGreaterEqual(out.count("server pid %d" % self.server.proc.pid), 2, out)

    def test_stat_without_stats_endpoint(self):
        with Server("shm://" + unique("nostats"), stats=False) as s:
            r = run([STAT, "--once", s.endpoints[0]])
            self.assertEqual(r.returncode, 1)
            self.assertIn("does not serve stats", r.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
