#!/usr/bin/env python3
"""Boots N QEMU (TCG) guests on one virtual link, runs a scenario on each, collects
machine-readable results and full console logs, and kills every guest on every exit
path (normal end, timeout, Ctrl-C, error).

    vmrun.py --kernel BZIMAGE --initrd IMAGE --scenario NAME --out DIR
             [--guests 2] [--timeout 1200] [--mem 768] [--smp ROLE=N] [--expect FILE]

Guest i gets role a, b, c..., address 169.254.77.(i+1) on eth0 and runs
/scenarios/NAME-ROLE.sh. A run passes when every guest finished with rc=0, every
MITOSIS-RESULT line passed, every check named in the --expect file was reported, and
no console log has a kernel warning, BUG, oops, KASAN, lockdep, kmemleak or hung-task
report. Results go to DIR/results.json; logs to DIR/guest-ROLE.log.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BAD = re.compile(
    r"WARNING:|BUG:|Oops|KASAN|UBSAN|general protection fault|Kernel panic|"
    r"possible circular locking|possible recursive locking|inconsistent lock state|"
    r"lockdep|suspicious RCU usage|unreferenced object|blocked for more than|"
    r"soft lockup|hard LOCKUP|DMA-API:|kfence|list_add corruption|list_del corruption|"
    r"refcount_t:|double free|use-after-free|rust_panic|panicked at"
)
RESULT = re.compile(r"MITOSIS-RESULT (\{.*\})\s*$")

procs = []


def kill_all():
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def on_signal(signum, _frame):
    kill_all()
    sys.exit(128 + signum)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Link:
    """The guests' virtual link, one datagram per Ethernet frame.

    Two guests (every scenario) are linked by Unix datagram sockets, each QEMU sending
    straight to the other's socket (`-netdev dgram`). A full receive queue makes the
    sender wait instead of dropping the frame, so the link is lossless, as RoCE expects
    of its fabric (priority flow control). UDP on loopback, the link until session 15,
    dropped every frame beyond the host socket's receive buffer: a READ request of 16
    pages (16 frames of 4 KiB back to back) lost frames and waited for rxe's
    retransmission timer (150 pages/s against 11,900 on this link, docs/benchmarks.md).
    A relay process on the path (the Python hub of session 11) added a hop per frame
    that competed with the two QEMUs for the host's 2 cores: about 0.8 ms TCP round
    trip through it. With more guests a hub thread repeats each frame (UDP) to every
    other guest.

    QEMU's stream socket netdev (TCP between QEMUs) was measured adding ~40 ms to a
    4 KiB RDMA READ (Nagle against delayed ACKs on the host); datagrams do not batch."""

    def __init__(self, n):
        self.thread = None
        self.dir = None
        if n == 2:
            # Short paths (a socket path has at most 107 bytes), removed in close().
            self.dir = tempfile.mkdtemp(prefix="mitosis-link-")
            self.paths = [os.path.join(self.dir, f"{i}.sock") for i in range(n)]
            return
        self.guest_ports = [free_udp_port() for _ in range(n)]
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.socks.append(s)
        self.send_ports = [s.getsockname()[1] for s in self.socks]
        self.frames = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        import select
        while not self.stop:
            ready, _, _ = select.select(self.socks, [], [], 0.5)
            for s in ready:
                i = self.socks.index(s)
                try:
                    frame = s.recv(65536)
                except OSError:
                    continue
                self.frames += 1
                for j, out in enumerate(self.socks):
                    if j != i:
                        try:
                            out.sendto(frame, ("127.0.0.1", self.guest_ports[j]))
                        except OSError:
                            pass  # that guest is not up (yet, or any more)

    def netdev(self, index):
        """Guest `index`'s `-netdev` argument."""
        if self.dir is not None:
            return (f"dgram,id=n0,local.type=unix,local.path={self.paths[index]},"
                    f"remote.type=unix,remote.path={self.paths[1 - index]}")
        return (f"socket,id=n0,udp=127.0.0.1:{self.send_ports[index]},"
                f"localaddr=127.0.0.1:{self.guest_ports[index]}")

    def close(self):
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.thread is None:
            return
        self.stop = True
        self.thread.join(timeout=2)
        for s in self.socks:
            s.close()


class Guest:
    def __init__(self, index, args, link, out):
        self.role = chr(ord("a") + index)
        self.ip = f"169.254.77.{index + 1}"
        self.peer = "169.254.77.2" if index == 0 else "169.254.77.1"
        self.log_path = os.path.join(out, f"guest-{self.role}.log")
        self.results = []
        self.bad = []
        self.booted_s = None
        self.ready_s = None
        self.done_rc = None
        self.start = time.monotonic()
        netdev = link.netdev(index)
        append = (
            f"console=ttyS0 panic=-1 loglevel=6 MROLE={self.role} MIP={self.ip} "
            f"MPEER={self.peer} MSCENARIO={args.scenario} {' '.join(args.append)}"
        ).strip()
        cmd = [
            "qemu-system-x86_64", "-machine", "pc", "-cpu", "max",
            "-smp", str(args.smp.get(self.role, 1)),
            "-m", str(args.mem), "-nographic", "-no-reboot", "-monitor", "none",
            "-kernel", args.kernel, "-initrd", args.initrd, "-append", append,
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:77:00:{index + 1:02x}",
        ]
        self.log = open(self.log_path, "w", buffering=1)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(self.proc)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.log.write(line + "\n")
            now = time.monotonic() - self.start
            if "MITOSIS-BOOTED" in line and self.booted_s is None:
                self.booted_s = now
            if "MITOSIS-READY" in line and self.ready_s is None:
                self.ready_s = now
            m = re.search(r"MITOSIS-DONE role=\w+ rc=(\d+)", line)
            if m:
                self.done_rc = int(m.group(1))
            m = RESULT.search(line)
            if m:
                try:
                    self.results.append(json.loads(m.group(1)))
                except json.JSONDecodeError:
                    self.bad.append(f"unparsable result line: {line}")
            elif BAD.search(line):
                self.bad.append(line)
            if line.startswith(("MITOSIS-RESULT", "mitosis-test")) or "MITOSIS-" in line:
                print(f"[{self.role} {now:7.1f}s] {line}", flush=True)
        self.log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--guests", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=1200)
    ap.add_argument("--mem", type=int, default=768)
    ap.add_argument("--append", action="append", default=[],
                    help="extra kernel command-line parameters (repeatable; KEY=VALUE reaches "
                         "the scenario as an environment variable)")
    ap.add_argument("--smp", action="append", default=[], metavar="ROLE=N",
                    help="vCPUs of guest ROLE (repeatable; 1 unless given)")
    ap.add_argument("--expect", action="append", default=[],
                    help="file of 'ROLE CHECK' lines that must be reported (repeatable)")
    args = ap.parse_args()
    if args.guests < 2:
        ap.error("--guests must be at least 2")
    try:
        args.smp = {role: int(n) for role, n in (s.split("=", 1) for s in args.smp)}
    except ValueError:
        ap.error("--smp takes ROLE=N, e.g. b=2")
    if any(n < 1 or n > 8 for n in args.smp.values()):
        ap.error("--smp: 1 to 8 vCPUs")
    os.makedirs(args.out, exist_ok=True)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    started = time.monotonic()
    guests = []
    link = Link(args.guests)
    try:
        for i in range(args.guests):
            guests.append(Guest(i, args, link, args.out))
        deadline = started + args.timeout
        timed_out = False
        for g in guests:
            left = deadline - time.monotonic()
            try:
                g.proc.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
    finally:
        kill_all()
        link.close()
    for g in guests:
        g.reader.join(timeout=10)
    wall = time.monotonic() - started

    failures = []
    if timed_out:
        failures.append(f"timed out after {args.timeout} s")
    checks = []
    for g in guests:
        if g.done_rc is None:
            failures.append(f"guest {g.role} did not finish (see {g.log_path})")
        elif g.done_rc != 0:
            failures.append(f"guest {g.role} scenario exited rc={g.done_rc}")
        for line in g.bad:
            failures.append(f"guest {g.role} log: {line.strip()}")
        for r in g.results:
            checks.append(r)
            if not r.get("pass"):
                failures.append(f"guest {g.role} check {r.get('check')} failed: {r.get('detail')}")
    seen = {(r.get("guest"), r.get("check")) for r in checks}
    for expect in args.expect:
        with open(expect) as f:
            for line in f:
                line = line.split("#")[0].strip()
                if not line:
                    continue
                role, check = line.split()
                if (role, check) not in seen:
                    failures.append(f"guest {role} never reported check {check}")

    passed = sum(1 for r in checks if r.get("pass"))
    summary = {
        "scenario": args.scenario,
        "wall_s": round(wall, 1),
        "guests": [
            {"role": g.role, "boot_s": g.booted_s, "ready_s": g.ready_s, "rc": g.done_rc, "log": g.log_path}
            for g in guests
        ],
        "checks": checks,
        "failures": failures,
        "pass": not failures,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print()
    print(f"vmrun {args.scenario}: wall {wall:.1f} s; " + ", ".join(
        f"{g.role}: boot {g.booted_s or float('nan'):.1f} s, ready {g.ready_s or float('nan'):.1f} s" for g in guests))
    for r in checks:
        metrics = {k: v for k, v in r.items() if k not in ("guest", "check", "pass", "detail")}
        mtxt = " ".join(f"{k}={v}" for k, v in metrics.items())
        print(f"  {'PASS' if r.get('pass') else 'FAIL'} {r.get('guest')} {r.get('check')} {mtxt}")
    for f_ in failures:
        print(f"  FAILURE: {f_}")
    # Every failed check is also in `failures`, with the run-level failures.
    print(f"vmrun: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
