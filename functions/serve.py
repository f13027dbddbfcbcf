"""Runs one function handler (functions/handlers/NAME.py) the two ways a platform
starts an instance:

    serve.py NAME --cold             interpreter start, imports, warm-up, then one
                                     request from stdin (JSON) answered on stdout
    serve.py NAME --wait DIR         imports, warm-up, a first request, then DIR/ready;
                                     waits for DIR/request.json and answers in
                                     DIR/response.json (the CRIU baseline dumps it
                                     while it waits)
    serve.py NAME --seed FILE        imports, warm-up, a first request, then
                                     mitosis.fork_prepare(): the handle goes to FILE
                                     and this process exits; every child resumed from
                                     it reads one request from stdin and answers it

A child's diagnostics (its pid, the seed's and its own CLOCK_MONOTONIC, its resume
report) go to stderr as one JSON line, so stdout carries nothing but the response.
"""

import argparse
import importlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "handlers"))


def answer(handler):
    line = sys.stdin.readline()
    if not line.strip():
        print(json.dumps({"error": "no request on stdin"}), flush=True)
        return 1
    try:
        response = handler.handle(json.loads(line))
    except (ValueError, KeyError, TypeError) as e:
        print(json.dumps({"error": f"bad request: {e}"}), flush=True)
        return 1
    print(json.dumps(response, sort_keys=True), flush=True)
    return 0


def wait_for_request(handler, d):
    """A warm instance parked until a request file appears (what CRIU dumps)."""
    with open(os.path.join(d, "ready"), "w") as f:
        f.write(str(os.getpid()))
    req = os.path.join(d, "request.json")
    while not os.path.exists(req):
        time.sleep(0.005)
    with open(req) as f:
        response = handler.handle(json.loads(f.read()))
    tmp = os.path.join(d, "response.json.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(response, sort_keys=True) + "\n")
    os.rename(tmp, os.path.join(d, "response.json"))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("function", help="handler module in functions/handlers")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cold", action="store_true", help="serve one request from stdin")
    mode.add_argument("--seed", metavar="FILE", help="prepare a snapshot, handle to FILE")
    mode.add_argument("--wait", metavar="DIR", help="warm up, then answer DIR/request.json")
    args = ap.parse_args()

    t0 = time.monotonic()
    handler = importlib.import_module(args.function)
    handler.warm()
    if args.cold:
        return answer(handler)

    # The first request, as a platform's warm-up would send it.
    handler.handle(dict(handler.SAMPLE))
    if args.wait:
        return wait_for_request(handler, args.wait)

    import mitosis

    warmed = time.monotonic()
    seed_clock = time.clock_gettime(time.CLOCK_MONOTONIC)
    handle = mitosis.fork_prepare()
    if handle is None:
        child_clock = time.clock_gettime(time.CLOCK_MONOTONIC)
        print(json.dumps({"mitosis_child": {
            "function": args.function, "pid": os.getpid(),
            "seed_monotonic": seed_clock, "child_monotonic": child_clock,
            "resume": mitosis.resume_report(),
        }}), file=sys.stderr, flush=True)
        # A child serves one request and is discarded: it leaves like a forked worker
        # (multiprocessing's children do the same), without the interpreter's
        # finalization, which would walk (and so fetch from the parent) the whole
        # inherited heap after the response and put it in the working set.
        rc = answer(handler)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    prepared = time.monotonic()
    tmp = args.seed + ".tmp"
    with open(tmp, "w") as f:
        f.write(handle + "\n")
    os.chmod(tmp, 0o600)
    os.rename(tmp, args.seed)
    print(json.dumps({"seed": args.function, "pid": os.getpid(), "warm_ms": round((warmed - t0) * 1e3, 1),
                      "prepare_ms": round((prepared - warmed) * 1e3, 1),
                      "handle_file": args.seed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
