#!/usr/bin/env python3
"""Turns the function benchmark's results (scripts/vmrun.py results.json of the
functions scenario with MBENCH=1) into the table for docs/benchmarks.md and a plot.

    bench-functions-report.py RESULTS.json OUT.png

Prints the Markdown table on stdout. The plot needs Pillow: the Makefile runs this
with a cached Pillow (pip --target, pinned) on PYTHONPATH.
"""
import json
import sys

FUNCTIONS = ("dynamic_html", "thumbnailer", "matrix_aes")
VARIANTS = (
    ("cold", "cold start (interpreter, imports, warm-up, request)"),
    ("cold-fixed", "cold start at fixed addresses (TCG translations reused)"),
    ("baseline", "child, resume: every page from the parent (no local files, no working set)"),
    ("resume", "child, resume: first on the host (libraries from local files)"),
    ("resume-ws", "child, resume: replaying the host's working-set record (in the background)"),
    ("resume-ws-sync", "child, resume: replaying the host's record before the child runs"),
    ("resume-wsp", "child, resume: first on a new host, replaying the parent's record (background)"),
    ("resume-wsp-sync", "child, resume: first on a new host, the parent's record before it runs"),
    ("run", "child, mitosis run (container), replaying the record"),
    ("eager", "child, resume --eager (local files)"),
    ("resume-w0", "child, resume, no prefetch window (local files)"),
    ("warm", "child, resume on a warm host (the previous child's pages kept, keep_ms)"),
    ("criu", "CRIU: dump on A + copy + restore to response on B"),
    ("criu-lazy", "CRIU lazy pages: dump without memory + copy + lazy restore to response"),
)
COLOURS = {"cold": (90, 90, 90), "cold-fixed": (160, 160, 160), "baseline": (148, 103, 189), "resume": (31, 119, 180),
           "resume-ws": (23, 190, 207), "resume-ws-sync": (120, 210, 220),
           "resume-wsp": (0, 128, 128), "resume-wsp-sync": (100, 170, 170), "run": (44, 160, 44), "eager": (255, 127, 14),
           "resume-w0": (188, 189, 34), "warm": (140, 86, 75), "criu": (214, 39, 40),
           "criu-lazy": (247, 129, 191)}


def load(path):
    with open(path) as f:
        doc = json.load(f)
    checks = {c["check"]: c for c in doc.get("checks", [])}
    table = {}
    for fn in FUNCTIONS:
        row = {}
        for how, _ in VARIANTS[1:]:
            c = checks.get(f"bench-{fn}-{how}")
            if c:
                row[how] = c
                row["cold"] = {"child_ms": c["cold_ms"], "child_min_ms": c.get("cold_min_ms"),
                               "child_max_ms": c.get("cold_max_ms"), "pages": 0}
        for how, name in (("criu", f"criu-restore-{fn}"), ("criu-lazy", f"criu-lazy-restore-{fn}")):
            c = checks.get(name)
            if c and c.get("pass"):
                row[how] = {"child_ms": c["total_ms"], "child_min_ms": c["total_ms"],
                            "child_max_ms": c["total_ms"], "pages": 0, "criu": c}
        table[fn] = row
    return table


def markdown(table):
    lines = ["| function | cold start (fixed addresses) | child: baseline | child: resume (local files) | "
             "child: resume + working set (in the background / before the child runs) | "
             "child: new host + parent's working set (background / before) | "
             "child: run + working set (setup) | child: eager | "
             "child: no window | child: warm host | pages fetched: baseline / local files / "
             "+ working set / touched / warm | remote faults: baseline / local files / + working "
             "set | CRIU: dump + copy + restore to response | CRIU lazy pages | "
             "cold (fixed) / best cold-cache child | CRIU / best cold-cache child | "
             "cold (fixed) / warm child | CRIU / warm child |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fn, row in table.items():
        def ms(how):
            c = row.get(how)
            if not c:
                return "-"
            return f"{c['child_ms']:.0f} ms ({c['child_min_ms']:.0f}-{c['child_max_ms']:.0f})"

        def field(how, key):
            return row.get(how, {}).get(key, 0)
        run = row.get("run", {})
        setup = f" ({run['launcher_setup_ms']:.0f} ms)" if "launcher_setup_ms" in run else ""
        pages = [field(h, "pages") for h in ("baseline", "resume", "resume-ws", "resume-w0",
                                             "warm")]
        faults = [field(h, "faults") for h in ("baseline", "resume", "resume-ws")]
        # The best a first child on a host reaches (no pages of the snapshot there yet,
        # but its working-set record), and a child on a warm host.
        children = [row[h]["child_ms"] for h in ("resume", "resume-ws", "resume-ws-sync",
                                                  "resume-wsp", "resume-wsp-sync", "run", "eager")
                    if h in row and row[h]["child_ms"]]
        fixed = row.get("cold-fixed", {}).get("child_ms")
        ratio = row["cold"]["child_ms"] / min(children) if children and "cold" in row else 0
        fixed_ratio = fixed / min(children) if children and fixed else 0
        criu = row.get("criu", {}).get("child_ms")
        criu_ratio = criu / min(children) if children and criu else 0
        warm = row.get("warm", {}).get("child_ms")
        warm_ratio = row["cold"]["child_ms"] / warm if warm and "cold" in row else 0
        fixed_warm = fixed / warm if warm and fixed else 0
        criu_warm = criu / warm if warm and criu else 0
        def criu_text(how):
            c = row.get(how, {}).get("criu")
            return (f"{c['total_ms']:.0f} ms ({c['dump_ms']:.0f} + {c['copy_ms']:.0f} + "
                    f"{c['restore_to_response_ms']:.0f}; {c['image_mib']:.1f} MiB)" if c else "-")
        lines.append(f"| {fn} | {ms('cold')} ({ms('cold-fixed')}) | {ms('baseline')} | {ms('resume')} | "
                     f"{ms('resume-ws')} / {ms('resume-ws-sync')} | "
                     f"{ms('resume-wsp')} / {ms('resume-wsp-sync')} | {ms('run')}{setup} | {ms('eager')} | {ms('resume-w0')} | "
                     f"{ms('warm')} | "
                     + " / ".join(f"{p:.0f}" for p in pages)
                     + f" ({pages[0] * 4096 / 2**20:.1f} / {pages[1] * 4096 / 2**20:.1f} MiB) | "
                     + " / ".join(f"{f:.0f}" for f in faults)
                     + f" | {criu_text('criu')} | {criu_text('criu-lazy')} | {ratio:.2f}x "
                     f"({fixed_ratio:.2f}x) | {criu_ratio:.2f}x | {warm_ratio:.2f}x "
                     f"({fixed_warm:.2f}x) | {criu_warm:.2f}x |")
    return "\n".join(lines)


SPLIT = (("launcher_ms", "launcher start to the module"), ("module_ms", "in the module"),
         ("return_ms", "module to the first instruction"),
         ("to_python_ms", "first instruction to the handler's first line"),
         ("serve_ms", "the request"))


def split_markdown(path):
    """Where a `mitosis resume` child's time goes (medians; from each child's resume
    report and clock, see tests/scenarios/functions.py `child_split`), and what
    starting a process costs on B (`bench-spawn`)."""
    with open(path) as f:
        checks = {c["check"]: c for c in json.load(f).get("checks", [])}
    lines = ["| function, child | total | " + " | ".join(label for _, label in SPLIT)
             + " | resume call to response | CRIU / that |",
             "|---" * (len(SPLIT) + 4) + "|"]
    for fn in FUNCTIONS:
        criu = checks.get(f"criu-restore-{fn}", {})
        for how in ("resume", "resume-ws-sync", "resume-wsp-sync", "warm"):
            c = checks.get(f"bench-{fn}-{how}")
            if not c or "module_ms" not in c:
                continue
            call = c["child_ms"] - c["launcher_ms"]
            vs_criu = (f"{criu['total_ms'] / call:.1f}x"
                       if criu.get("pass") and "total_ms" in criu and call > 0 else "-")
            lines.append(f"| {fn}, {how} | {c['child_ms']:.0f} ms | "
                         + " | ".join(f"{c[k]:.1f} ms" for k, _ in SPLIT)
                         + f" | {call:.0f} ms | {vs_criu} |")
    spawn = checks.get("bench-spawn")
    if spawn and spawn.get("pass"):
        lines.append("")
        lines.append("Process start to exit on B (median of 5): "
                     f"/bin/true {spawn['true_ms']:.1f} ms, `mitosis --version` "
                     f"{spawn['cli_ms']:.1f} ms ({spawn['cli_norandom_ms']:.1f} ms without "
                     f"address randomisation), `python3 -S -c pass` {spawn['python_ms']:.1f} ms "
                     f"({spawn['python_norandom_ms']:.1f} ms).")
    return "\n".join(lines)


def plot(table, out):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    bar_h, gap, left, width = 16, 14, 150, 900
    rows = sum(len(r) for r in table.values())
    height = 70 + rows * bar_h + len(table) * gap + 30 * len(VARIANTS) // 2 + 40
    img = Image.new("RGB", (left + width + 120, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), "Python functions on guest B: time to the first response (median of 3, ms)",
           fill="black", font=font)
    top = max((c["child_ms"] for r in table.values() for c in r.values()), default=1)
    y = 40
    for fn, row in table.items():
        d.text((10, y + 2), fn, fill="black", font=font)
        for how, _ in VARIANTS:
            c = row.get(how)
            if not c:
                continue
            w = max(1, int(width * c["child_ms"] / top))
            d.rectangle([left, y, left + w, y + bar_h - 3], fill=COLOURS[how])
            d.text((left + w + 5, y + 1), f"{c['child_ms']:.0f}", fill="black", font=font)
            y += bar_h
        y += gap
    y += 10
    for i, (how, label) in enumerate(VARIANTS):
        x = 10 + (i % 2) * 480
        yy = y + (i // 2) * 18
        d.rectangle([x, yy, x + 12, yy + 10], fill=COLOURS[how])
        d.text((x + 18, yy - 1), label, fill="black", font=font)
    img.save(out)


def main():
    table = load(sys.argv[1])
    print(markdown(table))
    print()
    print(split_markdown(sys.argv[1]))
    if len(sys.argv) > 2:
        plot(table, sys.argv[2])


if __name__ == "__main__":
    main()
