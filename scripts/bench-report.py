#!/usr/bin/env python3
"""Turns the remote-fork benchmark's results (scripts/vmrun.py results.json of the
bench scenario) into a summary table and a plot: resume time against seed size beside
a local fork, and page rates beside what TCP carries on the same link.

    bench-report.py RESULTS.json [OUT.png]

Prints the Markdown table on stdout. The plot needs Pillow: the Makefile runs this
with a cached Pillow (pip --target, pinned) on PYTHONPATH.
"""
import json
import math
import sys

# (label, check prefix, field): times in ms, per seed size.
TIMES = (
    ("local fork", "bench-prepare", "local_fork_ms"),
    ("resume, later cold child (lingering open)", "bench-child-ws-record", "resume_ms"),
    ("resume, + first-touch pages and background record", "bench-child-ws-bg", "resume_ms"),
    ("resume, first child of the run (connects)", "bench-child", "resume_ms"),
    ("prepare", "bench-prepare", "prepare_ms"),
)
TIME_COLOURS = ((90, 90, 90), (31, 119, 180), (23, 190, 207), (148, 103, 189),
                (255, 127, 14))
RATE_COLOURS = ((44, 160, 44), (31, 119, 180), (214, 39, 40))


def load(path):
    with open(path) as f:
        checks = {c["check"]: c for c in json.load(f).get("checks", [])}
    sizes = sorted(int(name.rsplit("-", 1)[1]) for name in checks
                   if name.startswith("bench-prepare-") and name.rsplit("-", 1)[1].isdigit())
    return checks, sizes


def rates(checks, size):
    """Pages per second: sequential touch by one child, the batched READs of an eager
    resume, and TCP bulk on the same link."""
    child, eager = checks.get(f"bench-child-{size}", {}), checks.get(f"bench-child-eager-{size}", {})
    link = checks.get("bench-link-tcp", {})
    touch = (child["pages_touched"] / child["touch_100pct_ms"] * 1e3
             if child.get("touch_100pct_ms") else 0.0)
    batched = (eager["eager_pages"] / eager["resume_ms"] * 1e3
               if eager.get("resume_ms") else 0.0)
    return touch, batched, link.get("bulk_pages_per_s", 0.0)


def markdown(checks, sizes):
    lines = ["| | " + " | ".join(f"{s} MiB" for s in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for label, prefix, field in TIMES:
        cells = [checks.get(f"{prefix}-{s}", {}).get(field) for s in sizes]
        lines.append(f"| {label} | " + " | ".join(
            f"{v:.1f} ms" if v is not None else "-" for v in cells) + " |")
    fork = [checks.get(f"bench-prepare-{s}", {}).get("local_fork_ms") for s in sizes]
    later = [checks.get(f"bench-child-ws-record-{s}", {}).get("resume_ms") for s in sizes]
    lines.append("| later cold child / local fork | " + " | ".join(
        f"{b / a:.1f}x" if a and b else "-" for a, b in zip(fork, later)) + " |")
    opens = [checks.get(f"bench-child-{s}", {}).get("resume_open_ms") for s in sizes]
    lines.append("| first child's open RPC (a new host's first open) | " + " | ".join(
        f"{v:.1f} ms" if v is not None else "-" for v in opens) + " |")
    lat = [checks.get(f"bench-fault-latency-{s}", {}) for s in sizes]
    lines.append("| one-page demand fault / one-page READ, same child (medians) | " + " | ".join(
        f"{c['median_us']:.0f} / {c['read_median_us']:.0f} us, {c['fault_over_read']:.2f}x"
        if c.get("read_median_us") else "-" for c in lat) + " |")
    for i, label in enumerate(("sequential touch, one child", "batched READ (eager)",
                               "TCP bulk, same link")):
        lines.append(f"| {label} | " + " | ".join(
            f"{rates(checks, s)[i]:,.0f} pages/s" for s in sizes) + " |")
    noahead = []
    for s in sizes:
        c = checks.get(f"bench-child-noahead-{s}", {})
        noahead.append(c["pages_touched"] / c["touch_100pct_ms"] * 1e3
                       if c.get("touch_100pct_ms") else None)
    lines.append("| sequential touch, no readahead (`readahead_windows=0`) | " + " | ".join(
        f"{v:,.0f} pages/s" if v else "-" for v in noahead) + " |")
    for label, field in (
            ("parent's CPU per resume (background taken out)", "parent_cpu_ms_per_resume"),
            ("of it, not serving READs (the control path)", "parent_control_ms_per_resume"),
            ("READ doorbells per resume (status page, faults)", "read_doorbells_per_resume"),
            ("parent's CPU per resume, reuse_open=0 (an open RPC each)", "open_parent_cpu_ms_per_resume"),
            ("of it, not serving READs (the open, the close)", "open_parent_control_ms_per_resume"),
            ("parent's CPU per one-page READ served (rxe on A's vCPU)", "parent_cpu_ms_per_read")):
        cpu = [checks.get(f"bench-parent-cpu-{s}", {}).get(field) for s in sizes]
        unit = "" if "doorbells" in field else " ms"
        lines.append(f"| {label} | " + " | ".join(
            f"{v:.2f}{unit}" if v is not None else "-" for v in cpu) + " |")
    lines += ["", concurrency(checks)]
    prof = profiles(checks)
    if prof:
        lines += ["", prof]
    return "\n".join(lines)


PROFILES = (("cold child's sequential touch (64 MiB)", "touch-64"),
            ("eager child (64 MiB)", "eager-64"),
            ("1 child faulting at random", "random-64-1"),
            ("8 children faulting at random", "random-64-8"))


def profiles(checks):
    """Where guest B's CPU went in each profiled phase (BENCH_PROFILE=1): its busy
    share, and how the busy samples split (tests/guest/src/profile.rs: the module by
    its object, user space by the sample, the rest of the kernel by symbol name)."""
    rows = [(label, checks[f"bench-profile-{name}"]) for label, name in PROFILES
            if f"bench-profile-{name}" in checks]
    if not rows:
        return ""
    parts = ("module", "rdma", "network", "scheduling", "kernel_other", "user")
    lines = ["| guest B, phase | samples | busy | of the busy samples: mitosis module | rxe + RDMA core | network stack | scheduling, softirqs | rest of the kernel | user |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, c in rows:
        cells = " | ".join(f"{c.get(p + '_pct_of_busy', 0):.1f}%" for p in parts)
        lines.append(f"| {label} | {c.get('samples', 0):.0f} | {c.get('busy_pct', 0):.0f}% | {cells} |")
    return "\n".join(lines)


def concurrency(checks):
    """8 children against one on B (64 MiB seed): sequential slices, and random faults
    (one page each) started together; pages/s and the ratio to one child."""
    runs = ((1, 8), (8, 1), (8, 3), (8, 8))
    lines = ["| children of the 64 MiB seed on B | 1 | 8, 1 READ batch | 8, 3 READ batches | 8, 8 READ batches (default) |",
             "|---|---|---|---|---|"]
    for label, prefix in (("sequential slices, pages/s", "bench-concurrent-64"),
                          ("random faults, pages/s", "bench-random-64")):
        one = checks.get(f"{prefix}-1-batches-8", {}).get("pages_per_s")
        cells = []
        for k, b in runs:
            v = checks.get(f"{prefix}-{k}-batches-{b}", {}).get("pages_per_s")
            cells.append("-" if v is None else
                         f"{v:,.0f}" + (f" ({v / one:.2f}x)" if one and k > 1 else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(checks, sizes, out):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    left, width, group, bar = 70, 560, 40, 12
    panel_h = len(sizes) * (len(TIMES) * bar + group // 2)
    img = Image.new("RGB", (2 * (left + width) + 40, 40 + panel_h + 110), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), "Remote fork on the test guests (perf kernel): time per seed size "
           "(log scale, ms) and page rates (pages/s)", fill="black", font=font)

    # Left: times on a log axis from 1 ms to the largest.
    top = max((checks.get(f"{p}-{s}", {}).get(f) or 1 for _, p, f in TIMES for s in sizes),
              default=10)
    span = math.log10(max(top, 10))
    y = 40
    for s in sizes:
        d.text((10, y + 2), f"{s} MiB", fill="black", font=font)
        for (label, prefix, field), colour in zip(TIMES, TIME_COLOURS):
            v = checks.get(f"{prefix}-{s}", {}).get(field)
            if v:
                w = max(1, int(width * max(math.log10(max(v, 1.0)), 0.02) / span))
                d.rectangle([left, y, left + w, y + bar - 3], fill=colour)
                d.text((left + w + 4, y), f"{v:.1f}", fill="black", font=font)
            y += bar
        y += group // 2

    # Right: page rates on a linear axis.
    x0 = left + width + 100
    top_rate = max((r for s in sizes for r in rates(checks, s)), default=1) or 1
    y = 40
    for s in sizes:
        d.text((x0 - 60, y + 2), f"{s} MiB", fill="black", font=font)
        for r, colour in zip(rates(checks, s), RATE_COLOURS):
            w = max(1, int((width - 80) * r / top_rate))
            d.rectangle([x0, y, x0 + w, y + bar - 3], fill=colour)
            d.text((x0 + w + 4, y), f"{r:,.0f}", fill="black", font=font)
            y += bar
        y += group

    y = 40 + panel_h + 15
    for i, ((label, _, _), colour) in enumerate(zip(TIMES, TIME_COLOURS)):
        d.rectangle([10, y + i * 16, 22, y + i * 16 + 10], fill=colour)
        d.text((28, y + i * 16 - 1), label, fill="black", font=font)
    for i, (label, colour) in enumerate(zip(("sequential touch, one child",
                                             "batched READ (eager resume)",
                                             "TCP bulk on the same link"), RATE_COLOURS)):
        d.rectangle([x0, y + i * 16, x0 + 12, y + i * 16 + 10], fill=colour)
        d.text((x0 + 18, y + i * 16 - 1), label, fill="black", font=font)
    img.save(out)


def main():
    checks, sizes = load(sys.argv[1])
    print(markdown(checks, sizes))
    if len(sys.argv) > 2:
        plot(checks, sizes, sys.argv[2])


if __name__ == "__main__":
    main()
