"""A seed for the container checks (tests/scenarios/functions.py): records its clocks,
prepares, and every child answers commands read from stdin, one JSON line each.

    probe.py HANDLE_FILE

    info         pid, hostname, processes in /proc, root entries, devices, network
                 interfaces, identity, cgroup, and the clocks (the seed's and its own)
    fork N       forks N sleeping children; how many forks succeeded, the first errno
    alloc MIB    allocates and touches MIB MiB, reporting each 16 MiB
    spin MS      burns MS ms of CPU; the wall time it took
    exit N       exits with status N
"""

import json
import os
import socket
import sys
import time

import mitosis

seed_mono = time.clock_gettime(time.CLOCK_MONOTONIC)
seed_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
handle = mitosis.fork_prepare()
if handle is not None:
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(handle + "\n")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    sys.exit(0)


def reply(obj):
    print(json.dumps(obj), flush=True)


def info():
    with open("/proc/net/dev") as f:
        ifaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    reply({
        "pid": os.getpid(), "ppid": os.getppid(), "hostname": socket.gethostname(),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "root": sorted(os.listdir("/")), "dev": sorted(os.listdir("/dev")),
        "ifaces": ifaces, "uid": os.getuid(), "gid": os.getgid(),
        "no_new_privs": status.get("NoNewPrivs", "").strip(),
        "cgroup": open("/proc/self/cgroup").read().strip(),
        "mono": time.clock_gettime(time.CLOCK_MONOTONIC),
        "boot": time.clock_gettime(time.CLOCK_BOOTTIME),
        "seed_mono": seed_mono, "seed_boot": seed_boot,
    })


def fork(n):
    pids, err = [], None
    for _ in range(n):
        try:
            pid = os.fork()
        except OSError as e:
            err = e.errno
            break
        if pid == 0:
            time.sleep(1)
            os._exit(0)
        pids.append(pid)
    for p in pids:
        os.waitpid(p, 0)
    reply({"forked": len(pids), "errno": err})


def alloc(mib):
    chunks = []
    for i in range(mib):
        chunks.append(bytearray(b"\x5a") * (1 << 20))
        if (i + 1) % 16 == 0:
            reply({"allocated": i + 1})
    reply({"allocated": mib, "done": True})


def spin(ms):
    c0, w0 = time.process_time(), time.monotonic()
    while (time.process_time() - c0) * 1e3 < ms:
        pass
    reply({"cpu_ms": (time.process_time() - c0) * 1e3, "wall_ms": (time.monotonic() - w0) * 1e3})


for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    cmd, args = words[0], [int(a) for a in words[1:]]
    if cmd == "info":
        info()
    elif cmd == "fork":
        fork(args[0])
    elif cmd == "alloc":
        alloc(args[0])
    elif cmd == "spin":
        spin(args[0])
    elif cmd == "exit":
        sys.stdout.flush()
        os._exit(args[0])
    else:
        reply({"error": f"unknown command {cmd}"})
sys.exit(0)
