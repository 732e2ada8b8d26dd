#!/usr/bin/env python3
"""Runs an example server and a client against it; the client's verdict is the test's.

usage: run_example.py SERVER CLIENT [CLIENT_ARGS...]

The server gets a fresh endpoint name (shm://zcrpc-example-<pid>) and must print its
"serving" line within 10 s; the client gets the same endpoint plus CLIENT_ARGS and 60 s.
The server is stopped with SIGTERM (SIGKILL after 10 s) on every path and must exit 0.
"""
import os
import selectors
import signal
import subprocess
import sys
import time

READY_TIMEOUT = 10
CLIENT_TIMEOUT = 60
STOP_TIMEOUT = 10


def wait_ready(server: subprocess.Popen) -> bool:
    sel = selectors.DefaultSelector()
    sel.register(server.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = server.stdout.readline()
        if not line:
            return False  # the server exited
        sys.stdout.write("server: " + line)
        if "serving" in line:
            return True
    return False


def stop(server: subprocess.Popen) -> int:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print("server ignored SIGTERM for %d s; killing it" % STOP_TIMEOUT, file=sys.stderr)
            server.kill()
            server.wait()
            return -1
    rest = server.stdout.read()
    if rest:
        sys.stdout.write("".join("server: " + l + "\n" for l in rest.splitlines()))
    return server.returncode


def main() -> int:
    server_exe, client_exe, *client_args = sys.argv[1:]
    endpoint = "shm://zcrpc-example-%d" % os.getpid()
    server = subprocess.Popen([server_exe, endpoint], stdout=subprocess.PIPE, text=True)
    try:
        if not wait_ready(server):
            print("server did not report it was serving %s" % endpoint, file=sys.stderr)
            return 1
        try:
            client = subprocess.run([client_exe, endpoint, *client_args], timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            print("client still running after %d s" % CLIENT_TIMEOUT, file=sys.stderr)
            return 1
        if client.returncode != 0:
            print("client exited with %d" % client.returncode, file=sys.stderr)
            return 1
    finally:
        status = stop(server)
    if status != 0:
        print("server exited with %d" % status, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
