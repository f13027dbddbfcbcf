"""Dynamic HTML (like SeBS 110.dynamic-html): render a Jinja2 template with the
request's data. Warm-up: import Jinja2, load and compile the template."""

import hashlib
import os
import random

import jinja2

_env = None
_template = None

SAMPLE = {"username": "warmup", "random_len": 10, "seed": 1, "request_id": "warm-0"}


def warm():
    global _env, _template
    here = os.path.dirname(os.path.abspath(__file__))
    _env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(here, "..", "templates")),
        autoescape=True,
    )
    _template = _env.get_template("page.html")


def handle(req):
    n = int(req.get("random_len", 100))
    if not 0 <= n <= 100_000:
        raise ValueError("random_len out of range")
    rng = random.Random(req.get("seed", 0))
    numbers = [rng.random() for _ in range(n)]
    table = [[f"{r}-{c}" for c in range(8)] for r in range(min(n, 200))]
    html = _template.render(
        title="Mitosis dynamic HTML",
        username=str(req.get("username", "world")),
        rendered_at="(fixed for comparison)",
        request_id=str(req.get("request_id", "")),
        numbers=numbers,
        table=table,
    )
    return {
        "function": "dynamic_html",
        "bytes": len(html),
        "items": html.count("<li>"),
        "greeting": html.split("<h1>")[1].split("</h1>")[0],
        "sha256": hashlib.sha256(html.encode()).hexdigest(),
    }
