"""Thumbnailer (like SeBS 210.thumbnailer): resize an image with Pillow. Warm-up:
import Pillow, decode the source image shipped with the functions (SeBS downloads it
from object storage; here it is read once from the image file)."""

import hashlib
import io
import os

from PIL import Image, ImageFilter

_source = None

SAMPLE = {"width": 64, "height": 64, "request_id": "warm-0"}


def warm():
    global _source
    here = os.path.dirname(os.path.abspath(__file__))
    with Image.open(os.path.join(here, "..", "data", "photo.jpg")) as im:
        im.load()
        _source = im.convert("RGB")


def handle(req):
    w, h = int(req.get("width", 200)), int(req.get("height", 200))
    if not (1 <= w <= 4096 and 1 <= h <= 4096):
        raise ValueError("thumbnail size out of range")
    thumb = _source.copy()
    thumb.thumbnail((w, h), Image.Resampling.LANCZOS)
    if req.get("sharpen"):
        thumb = thumb.filter(ImageFilter.SHARPEN)
    out = io.BytesIO()
    thumb.save(out, format="PNG", optimize=False)
    data = out.getvalue()
    return {
        "function": "thumbnailer",
        "source": list(_source.size),
        "size": list(thumb.size),
        "png_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
