"""The outline of a mask as one polygon: what a YOLO segmentation label holds.

``mask_polygon(rle)`` follows the outer border of each 4-connected part of a COCO RLE mask along
the pixels' edges, through the midpoints of those edges (the mask's iso-line at 0.5, as marching
squares draws it), simplifies each part with Douglas-Peucker at a quarter of a pixel, and joins
the parts, largest first, into one polygon through zero-width bridges at their closest points,
as Ultralytics joins the parts of an object. Holes are not cut out (YOLO polygons have none).

Guarantee: pycocotools rasterizes the polygon back to a mask close to the original (tested by
IoU); the same mask always gives the same polygon.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["mask_polygon"]

# A quarter of a pixel: the iso-line's points stay that close to the polygon written, which
# pycocotools rasterizes back to the same mask (tested), with a quarter fewer points.
_SIMPLIFY_PIXELS = 0.25
# Distances between the parts of a mask are computed this many points at a time (memory bound).
_BRIDGE_CHUNK = 512


def _trace(rows: list, row: int, col: int) -> tuple[list, list]:
    """The outer border of the 4-connected part of ``rows`` (a zero-padded 0/1 grid) whose
    topmost-leftmost pixel is ``(row, col)``, clockwise: its corners ``(x, y)`` (one at each
    change of direction) and the midpoint of each pixel edge along it. The walk keeps the
    part's pixels on its right-hand side."""
    x, y, dx, dy = col, row, 1, 0
    start = (x, y, dx, dy)
    corners, midpoints = [(x, y)], []
    # A border has at most 4 edges per pixel: past that the walk is wrong, never endless.
    for _ in range(4 * len(rows) * len(rows[0])):
        midpoints.append((x + dx / 2, y + dy / 2))
        x, y = x + dx, y + dy
        # The two pixels ahead of the corner: right and left of the direction (y points down).
        ahead_right = rows[y if dy + dx > 0 else y - 1][x if dx - dy > 0 else x - 1]
        ahead_left = rows[y if dy - dx > 0 else y - 1][x if dx + dy > 0 else x - 1]
        if not ahead_right:
            ndx, ndy = -dy, dx  # turn right, around the pixel just passed
        elif ahead_left:
            ndx, ndy = dy, -dx  # turn left, along the pixel ahead
        else:
            ndx, ndy = dx, dy
        if (x, y, ndx, ndy) == start:
            return corners, midpoints
        if (ndx, ndy) != (dx, dy):
            corners.append((x, y))
        dx, dy = ndx, ndy
    raise RuntimeError("the border walk did not close")


def _inside(corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels inside a closed rectilinear outline (its holes included): even-odd over the
    vertical edges. Each edge toggles its column from its first row to its last; the toggles
    are written at both ends and spread down the rows, then along them."""
    following = np.roll(corners, -1, axis=0)
    vertical = corners[:, 0] == following[:, 0]
    xs = corners[vertical, 0]
    ends = np.concatenate([corners[vertical, 1], following[vertical, 1]])
    toggles = np.zeros((shape[0] + 1, shape[1] + 1), np.uint8)
    np.bitwise_xor.at(toggles, (ends, np.concatenate([xs, xs])), 1)
    rows = np.bitwise_xor.accumulate(toggles, axis=0)
    return np.bitwise_xor.accumulate(rows, axis=1)[: shape[0], : shape[1]].astype(bool)


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed ring, anchored at its first point and the point farthest
    from it; a ring that would keep fewer than 3 points is returned whole."""
    # Points on a straight line between their neighbours first, at once (exact: the points are
    # multiples of half a pixel).
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    turns = before[:, 0] * after[:, 1] != before[:, 1] * after[:, 0]
    if turns.sum() >= 3:
        points = points[turns]
    n = len(points)
    if n <= 4:
        return points
    far = int(np.argmax(((points - points[0]) ** 2).sum(axis=1)))
    ring = np.vstack([points, points[:1]]).astype(np.float64)
    xs, ys = ring[:, 0].tolist(), ring[:, 1].tolist()
    keep = np.zeros(n, bool)
    keep[0] = keep[far] = True
    stack = [(0, far), (far, n)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        k, dist = _farthest(ring, xs, ys, a, b)
        if dist > tolerance:
            keep[k] = True
            stack += [(a, k), (k, b)]
    return points[keep] if keep.sum() >= 3 else points


# Below this many points a chord's farthest point is found in plain Python (NumPy's per-call
# cost dominates there; most chords of a simplified outline are short).
_NUMPY_FROM = 48


def _farthest(ring: np.ndarray, xs: list, ys: list, a: int, b: int) -> tuple[int, float]:
    """The point strictly between ``a`` and ``b`` farthest from their chord, and its distance."""
    x0, y0, dx, dy = xs[a], ys[a], xs[b] - xs[a], ys[b] - ys[a]
    length = (dx * dx + dy * dy) ** 0.5
    if b - a >= _NUMPY_FROM:
        offsets = ring[a + 1 : b] - ring[a]
        if length:
            dist = np.abs(dx * offsets[:, 1] - dy * offsets[:, 0]) / length
        else:
            dist = np.hypot(offsets[:, 0], offsets[:, 1])
        i = int(np.argmax(dist))
        return a + 1 + i, float(dist[i])
    best, best_k = -1.0, a + 1
    for k in range(a + 1, b):
        ox, oy = xs[k] - x0, ys[k] - y0
        d = abs(dx * oy - dy * ox) / length if length else (ox * ox + oy * oy) ** 0.5
        if d > best:
            best, best_k = d, k
    return best_k, best


def _bridge(ring: np.ndarray, part: np.ndarray) -> np.ndarray:
    """One ring holding both: ``part`` spliced in at the closest pair of points, through a
    zero-width bridge out and back (the way Ultralytics joins the parts of an object)."""
    best = (np.inf, 0, 0)
    for lo in range(0, len(part), _BRIDGE_CHUNK):
        chunk = part[lo : lo + _BRIDGE_CHUNK].astype(np.float64)
        dist = ((ring[:, None, :] - chunk[None, :, :]) ** 2).sum(axis=2)
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        if dist[i, j] < best[0]:
            best = (dist[i, j], int(i), lo + int(j))
    _, i, j = best
    return np.vstack([ring[: i + 1], part[j:], part[: j + 1], ring[i:]])


def mask_polygon(rle: dict) -> list[float]:
    """The outline of a COCO compressed RLE mask as one polygon ``[x1, y1, x2, y2, ...]`` in
    pixels, or ``[]`` for an empty mask.

    Rule: the outer border of each 4-connected part is followed along the pixels' edges, and
    its polygon runs through the midpoints of those edges: the mask's iso-line at 0.5, as
    marching squares draws it (a 45-degree staircase is one straight edge). Holes are not cut
    out (YOLO polygons have none). Each is simplified with Douglas-Peucker at a quarter of a
    pixel, and the parts, largest first, are joined into one polygon through zero-width
    bridges at their closest points (as Ultralytics joins the parts of an object)."""
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    filled_rows, filled_cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(filled_rows):
        return []
    top, left = int(filled_rows[0]), int(filled_cols[0])
    crop = np.pad(mask[top : filled_rows[-1] + 1, left : filled_cols[-1] + 1] != 0, 1)
    parts = []
    while crop.any():
        row, col = divmod(int(np.argmax(crop)), crop.shape[1])
        corners, midpoints = _trace(crop.tolist(), row, col)
        inside = _inside(np.array(corners, np.int64), crop.shape)
        parts.append((-int(inside.sum()), len(parts), np.array(midpoints)))
        crop &= ~inside
    parts.sort(key=lambda p: p[:2])
    offset = np.array([left - 1.0, top - 1.0])
    rings = [_simplify(points, _SIMPLIFY_PIXELS) + offset for _, _, points in parts]
    polygon = rings[0]
    for ring in rings[1:]:
        polygon = _bridge(polygon, ring)
    return [float(v) for v in polygon.reshape(-1)]
