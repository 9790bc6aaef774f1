"""An analytic Shapes World detector (no learning) and GenEval-style scoring of prompt adherence.

    objects = detect(image)                      # PIL image, HxWx3 array, or a [3, H, W] tensor in [0, 1]
    result = score(parse_caption(prompt), objects)

Detection, step by step (every threshold is a module constant):

1. Pixels. Offsets from the background are taken in (Y, Cb, Cr). A pixel's colour is the palette colour
   whose chroma direction (hue) is nearest to its own: mixing with the background (blur, anti-aliasing,
   a VQ decoder) and chroma subsampling (JPEG) shrink chroma but keep its direction, and the six hues are
   >= 48 degrees apart. How far the pixel goes towards that colour, alpha, is its projection on the
   colour's offset with chroma weighted by CHROMA_WEIGHT against luma (luma keeps the geometry where
   JPEG halves the chroma resolution; yellow differs from the background by only 48 in luma, so chroma
   still counts). The pixel is foreground if alpha >= ALPHA_THRESHOLD (half way or more), its hue
   is within acos(MIN_HUE_COS) of the colour's, and it keeps >= MIN_CHROMA of the chroma its alpha
   implies; otherwise it is background (near-background, or grey / black / a hue of no palette colour).
2. Objects. Foreground pixels are grouped into 8-connected components (objects of the world never touch:
   >= 3 px between cells' objects at 32 px). A component that contains two object-sized regions of
   different colours (each >= SPLIT_SHARE of it and >= the minimum area) is split into them; otherwise the
   component is one object whose colour is the alpha-weighted majority of its pixels. Components smaller
   than the minimum area (MIN_AREA_FRACTION of the small triangle's area, >= 3 px) are specks and are
   ignored.
3. Attributes. shape: holes of the object's mask are filled and the mask is compared (IoU) with a circle,
   a square and a triangle drawn by the world's own renderer in the same bounding box (fill ratio ~0.8 /
   1 / ~0.6 and the triangle's narrow top decide; the aspect ratio follows the box). When that is not
   decisive (best IoU < CONFIDENT_IOU) or the edges are soft (blur, JPEG, noise: softness > MAX_SOFTNESS)
   the object's soft alpha map is matched instead (`soft_shape`): least squared error against the three
   shapes in boxes near the thresholded one and of about the same mass, each blurred by a Gaussian of
   every sigma in BLUR_SIGMAS, centroids aligned; blur shrinks a thresholded small circle into a square
   blob, but not its soft map. position: the 3x3 cell of the mask's centroid. size: "large" if the longer
   side of the bounding box is at least half way from the world's small side to its large side.

`detect` returns objects in reading order of their cells (then larger first):
    {"colour", "shape", "position", "size", "bbox": (x0, y0, x1, y1) ends exclusive, "pixels": area}

Scoring rules (`score(asked, found)`), GenEval-style:

* `asked`: specs from `parse_caption` (colour, shape, optional size, absolute position or a relation to
  another asked object); `found`: `detect` output (or ground-truth objects).
* Asked objects are assigned to distinct found objects (or to none when fewer were found) by the
  assignment that maximises the number of correct attribute checks (ties: the first such assignment in
  lexicographic order of found indices). Extra found objects only cost `count`.
* colour / shape / position: the fraction of asked objects whose assigned found object has that attribute
  right; an unassigned asked object is wrong on everything. A relative position ("a to the left of b") is
  right for both a and b when their assigned objects are in the same row with a's column left of b's (same
  column and a's row above b's for above/below) - the world's own, strict, grid semantics.
* size: the same fraction over the asked objects that mention a size; None when the prompt mentions none.
* count: 1.0 if exactly as many objects were found as asked, else 0.0.
* overall: 1.0 if count is 1 and every asked attribute (colour, shape, position or relation, size when
  asked) of every asked object is right, else 0.0.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from recipes.data.shapes import (
    BACKGROUND,
    COLOURS,
    POSITIONS,
    SHAPES,
    draw_shape,
    object_side,
    parse_caption,
    relation_holds,
)

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
ALPHA_THRESHOLD = 0.5  # a pixel is foreground from half way between the background and its colour
ALPHA_MAX = 1.5
CHROMA_WEIGHT = 0.1  # weight of (Cb, Cr) against Y in alpha: luma keeps the geometry, chroma is blurred
MIN_HUE_COS = 0.75  # cos of the angle between a pixel's chroma and its colour's (palette hues are >= 48 deg apart)
MIN_CHROMA = 0.15  # a foreground pixel keeps >= 15% of the chroma its alpha implies (greys are no colour)
MIN_AREA_FRACTION = 0.3  # specks: below this fraction of the small triangle's area
SPLIT_SHARE = 0.3
CONFIDENT_IOU = 0.9  # below this, the shape is decided by blur-aware soft matching
MAX_SOFTNESS = 0.1  # sum(min(alpha, 1 - alpha)) / sum(alpha) above this: soft edges, soft matching
BLUR_SIGMAS: tuple[float, ...] = (0.0, 0.5, 0.8, 1.1, 1.4, 1.8)
SOFT_AREA_TOLERANCE = 0.3
DEGRADATIONS: tuple[str, ...] = ("jpeg50", "blur0.7", "noise8")

_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
_BG = np.array(BACKGROUND, dtype=np.float32)
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                dtype=np.float32)  # RGB -> (Y, Cb, Cr), the JPEG (BT.601 full range) matrix
_DIRS = (_PALETTE - _BG) @ _YCC.T  # [K, 3]: each colour's offset from the background in (Y, Cb, Cr)
_DIRS_C = _DIRS[:, 1:]
_DIRS_C_NORM = np.linalg.norm(_DIRS_C, axis=1)
_WEIGHT = np.array([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT], dtype=np.float32)
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
_PAD = 6  # soft templates: margin around the box for the blur (3 sigma of the widest)


def to_array(image) -> np.ndarray:
    """PIL image, HxWx3 / 3xHxW array or tensor (uint8, or float in [0, 1]) -> HxWx3 float32 in [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().float().cpu().numpy()
    a = np.asarray(image)
    if a.ndim != 3:
        raise ValueError(f"expected one image (H, W, 3) or (3, H, W), got shape {a.shape}")
    if a.shape[-1] != 3 and a.shape[0] == 3:
        a = a.transpose(1, 2, 0)
    if a.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32)
    a = a.astype(np.float32)
    return np.clip(a * 255.0, 0, 255) if a.max(initial=0.0) <= 1.0 + 1e-6 else np.clip(a, 0, 255)


def _offsets(image) -> np.ndarray:
    """HxWx3 offsets of every pixel from the background, in (Y, Cb, Cr)."""
    return (to_array(image) - _BG) @ _YCC.T


def _alpha(x: np.ndarray, k) -> np.ndarray:
    """How far offsets x ([..., 3]) go towards palette colour(s) k: a luma-weighted projection, clipped."""
    d = _DIRS[k]
    return np.clip(((x * _WEIGHT) * d).sum(-1) / ((d * _WEIGHT) * d).sum(-1), 0.0, ALPHA_MAX)


def _classify(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    H, W, _ = x.shape
    x = x.reshape(-1, 3)
    chroma = x[:, 1:]
    norm = np.linalg.norm(chroma, axis=1)
    cos = (chroma @ _DIRS_C.T) / (norm[:, None] * _DIRS_C_NORM[None] + 1e-6)  # [N, K]: hue agreement
    k = cos.argmax(1)
    alpha = _alpha(x, k)
    hue_ok = cos[np.arange(len(k)), k] >= MIN_HUE_COS
    coloured = hue_ok & (norm >= MIN_CHROMA * _DIRS_C_NORM[k] * np.minimum(alpha, 1))
    labels = np.where((alpha >= ALPHA_THRESHOLD) & coloured, k, -1)
    return labels.reshape(H, W), alpha.reshape(H, W)


def classify_pixels(image) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: palette index into COLOUR_NAMES (-1 = background / no palette colour) and alpha (how far
    from the background towards that colour, 0..ALPHA_MAX)."""
    return _classify(_offsets(image))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an (n, 2) array of (y, x), in scan order."""
    H, W = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, pixels = [(int(y0), int(x0))], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for dy, dx in _NEIGHBOURS:
                v, u = y + dy, x + dx
                if 0 <= v < H and 0 <= u < W and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    stack.append((v, u))
        out.append(np.array(pixels, dtype=np.int64))
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels of a (cropped) mask not 4-connected to its border become foreground."""
    H, W = mask.shape
    outside = np.zeros_like(mask, dtype=bool)
    stack = [(y, x) for y in range(H) for x in (0, W - 1)] + [(y, x) for x in range(W) for y in (0, H - 1)]
    stack = [(y, x) for y, x in stack if not mask[y, x]]
    for y, x in stack:
        outside[y, x] = True
    while stack:
        y, x = stack.pop()
        for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= v < H and 0 <= u < W and not mask[v, u] and not outside[v, u]:
                outside[v, u] = True
                stack.append((v, u))
    return ~outside


@functools.lru_cache(maxsize=4096)
def shape_template(shape: str, w: int, h: int) -> np.ndarray:
    """The world's rendering of `shape` filling a w x h box, as a boolean mask."""
    m = Image.new("L", (w, h), 0)
    draw_shape(ImageDraw.Draw(m), shape, (0, 0, w, h), 255)
    return np.asarray(m) > 0


def classify_shape(mask: np.ndarray) -> tuple[str, dict[str, float]]:
    """Shape of a mask cropped to its bounding box: best IoU with the rendered templates."""
    h, w = mask.shape
    ious = {}
    for shape in SHAPES:
        t = shape_template(shape, w, h)
        ious[shape] = float((t & mask).sum() / max(1, (t | mask).sum()))
    return max(ious, key=ious.get), ious


def _blur(m: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return m
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
    k /= k.sum()
    m = np.apply_along_axis(np.convolve, 0, m, k, mode="same")
    return np.apply_along_axis(np.convolve, 1, m, k, mode="same")


@functools.lru_cache(maxsize=8192)
def _soft_templates(shape: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """The template blurred by each of BLUR_SIGMAS ([S, h + 2 _PAD, w + 2 _PAD]), their squared sums, the
    template's area and its centroid in the padded frame (a symmetric blur does not move it)."""
    m = np.zeros((h + 2 * _PAD, w + 2 * _PAD), dtype=np.float64)
    t = shape_template(shape, w, h)
    m[_PAD:_PAD + h, _PAD:_PAD + w] = t
    stack = np.stack([_blur(m, sigma) for sigma in BLUR_SIGMAS])
    total = m.sum()
    cy = float((m.sum(1) * np.arange(m.shape[0])).sum() / total)
    cx = float((m.sum(0) * np.arange(m.shape[1])).sum() / total)
    return stack, (stack * stack).sum((1, 2)), int(t.sum()), cy, cx


def soft_shape(alpha: np.ndarray, box_w: int, box_h: int) -> tuple[str, dict[str, float]]:
    """Shape of an object from its soft alpha map (a window around it, other objects zeroed): the least
    squared error against the world's shapes drawn in boxes near its thresholded box (w-1..w+3,
    h-1..h+3: blur shrinks the thresholded box) whose area is within SOFT_AREA_TOLERANCE of the map's
    mass (blur keeps the mass), each blurred by every one of BLUR_SIGMAS, with centroids aligned.
    Returns the shape and each shape's best error."""
    total = float(alpha.sum())
    if total <= 0:
        return "square", {s: 0.0 for s in SHAPES}
    ys, xs = np.arange(alpha.shape[0]), np.arange(alpha.shape[1])
    cy, cx = float(alpha.sum(1) @ ys / total), float(alpha.sum(0) @ xs / total)
    margin = max(alpha.shape) + 2 * _PAD + 4
    canvas = np.zeros((alpha.shape[0] + 2 * margin, alpha.shape[1] + 2 * margin))
    canvas[margin:margin + alpha.shape[0], margin:margin + alpha.shape[1]] = alpha
    a2 = float((alpha * alpha).sum())
    errors = {}
    for shape in SHAPES:
        best = math.inf
        for w in range(max(2, box_w - 1), box_w + 4):
            for h in range(max(2, box_h - 1), box_h + 4):
                stack, t2, area, ty, tx = _soft_templates(shape, w, h)
                if abs(area - total) > SOFT_AREA_TOLERANCE * total + 2:
                    continue
                oy, ox = margin + round(cy - ty), margin + round(cx - tx)
                region = canvas[oy:oy + stack.shape[1], ox:ox + stack.shape[2]]
                best = min(best, a2 + float((t2 - 2 * (stack * region).sum((1, 2))).min()))
        errors[shape] = best
    return min(errors, key=errors.get), errors


def _min_area(image_size: int) -> int:
    side = object_side("small", image_size)
    return max(3, round(MIN_AREA_FRACTION * side * side / 2))  # the small triangle covers ~half its box


def _object(pixels: np.ndarray, k: int, x: np.ndarray, labels: np.ndarray) -> dict:
    H, W = labels.shape
    ys, xs = pixels[:, 0], pixels[:, 1]
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    crop[ys - y0, xs - x0] = True
    shape, ious = classify_shape(_fill_holes(crop))
    wy0, wx0, wy1, wx1 = max(0, y0 - 3), max(0, x0 - 3), min(H, y1 + 3), min(W, x1 + 3)
    alpha = np.minimum(_alpha(x[wy0:wy1, wx0:wx1], k), 1.0)
    mine = np.zeros((H, W), dtype=bool)
    mine[ys, xs] = True
    alpha[(labels[wy0:wy1, wx0:wx1] >= 0) & ~mine[wy0:wy1, wx0:wx1]] = 0.0  # other objects
    softness = float(np.minimum(alpha, 1.0 - alpha).sum() / max(alpha.sum(), 1e-6))
    if ious[shape] < CONFIDENT_IOU or softness > MAX_SOFTNESS:  # blurred or deformed: match soft templates
        shape, _ = soft_shape(alpha, x1 - x0, y1 - y0)
    cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
    row, col = min(2, int(cy * 3 / H)), min(2, int(cx * 3 / W))
    small, large = object_side("small", W), object_side("large", W)
    size = "large" if max(x1 - x0, y1 - y0) >= (small + large) / 2 else "small"
    return {"colour": COLOUR_NAMES[k], "shape": shape, "position": POSITIONS[3 * row + col], "size": size,
            "bbox": (x0, y0, x1, y1), "pixels": len(pixels)}


def detect(image, min_area: int | None = None) -> list[dict]:
    """The Shapes World objects in an image (see the module docstring for the rules)."""
    x = _offsets(image)
    labels, alpha = _classify(x)
    H, W = labels.shape
    min_area = _min_area(W) if min_area is None else int(min_area)
    found = []
    for comp in _components(labels >= 0):
        if len(comp) < min_area:
            continue
        ys, xs = comp[:, 0], comp[:, 1]
        comp_labels = labels[ys, xs]
        parts = []  # (pixels, colour index) of object-sized single-colour regions
        for k in np.unique(comp_labels):
            sub = np.zeros((H, W), dtype=bool)
            sel = comp_labels == k
            sub[ys[sel], xs[sel]] = True
            largest = max(_components(sub), key=len)
            if len(largest) >= min_area and len(largest) >= SPLIT_SHARE * len(comp):
                parts.append((largest, int(k)))
        if len(parts) >= 2:
            found.extend(_object(p, k, x, labels) for p, k in parts)
        else:
            weights = np.bincount(comp_labels, weights=np.minimum(alpha[ys, xs], 1.0), minlength=len(COLOUR_NAMES))
            found.append(_object(comp, int(weights.argmax()), x, labels))
    found.sort(key=lambda o: (POSITIONS.index(o["position"]), -o["pixels"]))
    return found


# -- scoring -------------------------------------------------------------------------------------------------------


def _checks(spec: dict, obj: dict | None, assigned: Sequence[dict | None]) -> dict[str, bool | None]:
    """Which attributes of one asked spec the assigned found object gets right (None: not asked)."""
    if obj is None:
        return {"colour": False, "shape": False, "position": False, "size": False if spec.get("size") else None}
    relation = spec.get("relation")
    if relation is not None:
        rel, j = relation
        other = assigned[j] if 0 <= j < len(assigned) else None
        position = other is not None and relation_holds(rel, obj["position"], other["position"])
    elif spec.get("position") is not None:
        position = obj["position"] == spec["position"]
    else:
        position = None
    return {"colour": obj["colour"] == spec["colour"], "shape": obj["shape"] == spec["shape"],
            "position": position, "size": (obj.get("size") == spec["size"]) if spec.get("size") else None}


def score(asked: Sequence[dict], found: Sequence[dict]) -> dict:
    """GenEval-style adherence of found objects to asked specs (rules in the module docstring):
    {"colour", "shape", "position", "count", "overall": float in [0, 1], "size": float | None}."""
    asked, found = list(asked), list(found)
    if not asked:
        count = float(not found)
        return {"colour": 1.0, "shape": 1.0, "position": 1.0, "size": None, "count": count, "overall": count}
    k, m = len(asked), len(found)
    choices = list(range(m)) + [None] * max(0, k - m)
    best, best_total = None, -1
    for perm in dict.fromkeys(itertools.permutations(choices, k)):
        assigned = [None if j is None else found[j] for j in perm]
        checks = [_checks(s, o, assigned) for s, o in zip(asked, assigned, strict=True)]
        total = sum(bool(v) for c in checks for v in c.values())
        if total > best_total:
            best, best_total = checks, total
    result = {}
    for attr in ("colour", "shape", "position", "size"):
        values = [c[attr] for c in best if c[attr] is not None]
        result[attr] = float(np.mean(values)) if values else (None if attr == "size" else 1.0)
    result["count"] = float(m == k)
    all_right = all(v for c in best for v in c.values() if v is not None)
    result["overall"] = float(all_right and m == k)
    return result


def caption_correct(caption: str, objects: Sequence[dict]) -> bool:
    """Whether a (predicted) caption is a complete, true description of an image's ground-truth objects:
    it parses as a Shapes World caption and `score` of it against the objects is 1 overall."""
    try:
        specs = parse_caption(caption)
    except ValueError:
        return False
    return score(specs, objects)["overall"] == 1.0


# -- degradations and detector agreement ----------------------------------------------------------------------------


def degrade(image: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """Mild degradations like a VQ reconstruction: "jpeg50" (JPEG quality 50, default 4:2:0 chroma),
    "blur0.7" (Gaussian blur, radius 0.7), "noise8" (additive Gaussian noise, sigma 8/255, clipped)."""
    if kind == "jpeg50":
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=50)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "blur0.7":
        return image.filter(ImageFilter.GaussianBlur(0.7))
    if kind == "noise8":
        a = np.asarray(image.convert("RGB"), dtype=np.float32)
        a = a + np.random.default_rng(seed).normal(0.0, 8.0, a.shape)
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    raise ValueError(f"unknown degradation {kind!r} (known: {DEGRADATIONS})")


def agreement(samples: Iterable[dict], transform: Callable[[Image.Image, int], Image.Image] | None = None) -> dict:
    """Detector vs ground truth over samples ({"image", "objects"}): per-object agreement on colour, shape,
    position and size (best assignment, as in `score`), per-image agreement on count and on everything
    (overall), and the numbers of images and objects. `transform(image, n)` degrades image n first."""
    totals = {"colour": 0.0, "shape": 0.0, "position": 0.0, "size": 0.0, "count": 0.0, "overall": 0.0}
    images = objects = 0
    for n, s in enumerate(samples):
        image = s["image"] if transform is None else transform(s["image"], n)
        truth = [{a: o[a] for a in ("colour", "shape", "position", "size")} for o in s["objects"]]
        r = score(truth, detect(image))
        k = len(truth)
        for a in ("colour", "shape", "position", "size"):
            totals[a] += r[a] * k
        totals["count"] += r["count"]
        totals["overall"] += r["overall"]
        images, objects = images + 1, objects + k
    out = {a: totals[a] / max(1, objects) for a in ("colour", "shape", "position", "size")}
    out.update(count=totals["count"] / max(1, images), overall=totals["overall"] / max(1, images),
               images=images, objects=objects)
    return out
