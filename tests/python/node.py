"""A real `kvnode serve` on a unix socket in a temporary directory, for the Python tests.
KVNODE_BIN names the program (ctest passes the built one), KVNODE_LIB the library."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

DEADLINE_S = 60  # a loaded 2-core machine: wait on conditions, generously


def kvnode_bin():
    exe = os.environ.get("KVNODE_BIN") or shutil.which("kvnode")
    if not exe:
        raise RuntimeError("set KVNODE_BIN to the kvnode program (ctest test_python does)")
    return exe


class Node:
    def __init__(self, cpu_gb="0.2"):
        self.dir = tempfile.mkdtemp(prefix="kvn-py-")
        self.sock = os.path.join(self.dir, "n.sock")
        self.cfg = os.path.join(self.dir, "n.yaml")
        with open(self.cfg, "w") as f:
            f.write("node_name: py\nsocket_path: %s\nlisten: 127.0.0.1:0\n"
                    "max_local_cpu_size: %s\ntransport: tcp\n" % (self.sock, cpu_gb))
        self.out = open(os.path.join(self.dir, "out"), "w+")
        self.err = open(os.path.join(self.dir, "err"), "w+")
        env = {k: v for k, v in os.environ.items()
               if k not in ("KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", "KVNODE_SCHEDULER_URL",
                            "KVNODE_AUTH_TOKEN")}
        self.p = subprocess.Popen([kvnode_bin(), "serve", "-c", self.cfg], stdout=self.out,
                                  stderr=self.err, env=env)
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if self.p.poll() is not None:
                break
            self.out.seek(0)
            if "serving on" in self.out.read() and os.path.exists(self.sock):
                return
            time.sleep(0.05)
        self.err.seek(0)
        msg = self.err.read()
        self.stop()
        raise RuntimeError("kvnode serve did not come up: " + msg)

    def stat(self):
        out = subprocess.run([kvnode_bin(), "stat", "--json", "--node", self.sock], check=True,
                             capture_output=True, text=True, timeout=DEADLINE_S).stdout
        return json.loads(out)

    def leases(self):
        return self.stat()["clients"]["leases"]

    def wait_leases(self, n):
        """The node's lease count once it is n (a release is a message the node handles
        after the call returns), else the last count seen."""
        end = time.monotonic() + DEADLINE_S
        while True:
            got = self.leases()
            if got == n or time.monotonic() > end:
                return got
            time.sleep(0.05)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.out.close()
        self.err.close()
        if not os.environ.get("KVN_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
