"""The report's example images: small, mergeable bottom-k sets of thumbnails.

What a person curating the data wants to look at: a few images of each category with that
category's masks drawn over them, a few images carrying each warning flag, and each
category's smallest and largest instance. Each set keeps the ``K[set]`` entries of smallest
rank: an image's rank is a hash of ``(split, image_id)`` (``image_key``), an instance's its
``area`` then a hash of ``(split, annotation id)``. The k smallest of a union are the k smallest
of the parts' k smallest, so ``ExampleSets.merge`` (union, then keep k) is exact, associative
and commutative: the same data gives the same examples whatever the runner, shards or bundles.

A shard writer holds one ``ExamplePicker``. Before an image is read it asks ``request``: the
image is a candidate of a set only if its rank is below the k-th smallest the shard holds so
far (a set's k-th smallest only falls as images are added, so no image that ends in a set is
missed), and only candidates get a thumbnail from the decoder (``images.thumbnails``). After
the image is written, ``add`` offers its thumbnails to the sets. An image of no thumbnail
(its facts were reused without decoding) enters no set.

Pure. Bounded: at most ``K`` entries per category and flag, a few KB each, whatever the size
of the data (``examples_document`` names them for ``stats.json``; ``example_pictures`` gives
their JPEG bytes for the page).
"""

from __future__ import annotations

import collections
import hashlib

from coco_beam.transforms.images.thumbnails import ThumbnailRequest
from coco_beam.transforms.stats.families import Family

__all__ = [
    "EXIF_ROTATED",
    "K",
    "ExamplePicker",
    "ExampleSets",
    "example_pictures",
    "examples_document",
    "image_key",
    "picture_id",
]

# Entries kept per group of each set: three images per category and per flag, one instance
# each for the smallest and largest of a category (enough to see, small enough to inline).
K = {"categories": 3, "flags": 3, "smallest": 1, "largest": 1}
# The examples' own name for an image whose EXIF orientation is 2 to 8 (not a warning flag:
# the stored pixels are right, a viewer shows them turned).
# ``ExamplePicker.preselect`` keeps this many times ``K`` candidates per category and shard: a
# margin for candidates rejected when decoded.
PRESELECT = 2
_PRESELECTED = ("categories", "smallest", "largest")
EXIF_ROTATED = "exif_rotated"
# Flags decoding decides (``images.decode``, ``shards.load``): their candidates' thumbnails are
# made only when decoding finds the flag.
_ROTATION_FLAGS = (EXIF_ROTATED, "exif_dims_swapped")
_EXTENSION_FLAG = "extension_mismatch"
_NO_ANNOTATION = -1


def image_key(split: str, image_id: int) -> int:
    """An image's rank in the example sets: 64 bits of BLAKE2b of ``split`` and its id."""
    digest = hashlib.blake2b(f"{split}\x00{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _annotation_key(split: str, annotation_id: int) -> int:
    digest = hashlib.blake2b(f"{split}\x00a{annotation_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def picture_id(kind: str, group, split: str, image_id: int) -> str:
    """The page's name of one thumbnail: ``kind`` is categories, flags, smallest, largest (of
    ``group``: a category id or a flag) or image (a plain thumbnail, ``group`` None)."""
    return f"{kind}-{group}-{split}-{image_id}"


class ExampleSets(Family):
    """The example sets of a shard, a split or the dataset. Each field maps a group (category
    id or flag) to its entries ``(rank, split, image id, annotation id or -1, jpeg)``, sorted,
    at most ``K[field]``."""

    __slots__ = ("categories", "flags", "smallest", "largest")

    def __init__(self):
        self.categories = {}  # category id -> images holding it, masks of it drawn
        self.flags = {}  # flag -> images carrying it (or one of their annotations)
        self.smallest = {}  # category id -> its instance of smallest area, cut out
        self.largest = {}  # category id -> its instance of largest area, cut out

    def merge(self, other: ExampleSets) -> None:
        """Adds ``other``'s entries; keeps each group's ``K`` of smallest rank."""
        for name in self.__slots__:
            mine, k = getattr(self, name), K[name]
            for group, entries in getattr(other, name).items():
                mine[group] = sorted(set(mine.get(group, ())) | set(entries))[:k]

    def could_enter(self, name: str, group, rank: tuple) -> bool:
        """Whether an entry of ``rank`` would be kept in ``group`` of set ``name`` now."""
        entries = getattr(self, name).get(group)
        return not entries or len(entries) < K[name] or rank < entries[-1][0]

    def offer(self, name: str, group, entry: tuple) -> None:
        """Adds ``entry`` to ``group`` of set ``name`` if its rank is among the ``K`` smallest
        (the group's list is replaced, never changed in place)."""
        if self.could_enter(name, group, entry[0]):
            entries = getattr(self, name).get(group, [])
            getattr(self, name)[group] = sorted({*entries, entry})[: K[name]]


def _annotation_flags(plan) -> set[str]:
    return {flag for ann in plan.annotations for flag in ann.get("flags") or ()}


def _instances(plan) -> dict[int, tuple[dict, dict]]:
    """Per category of ``plan``: its instance of smallest and of largest area (by area, then
    their hash), among those with a box and a mask, not crowds."""
    chosen: dict[int, tuple[dict, dict]] = {}
    for ann in plan.annotations:
        w, h = ann["bbox"][2], ann["bbox"][3]
        if ann["iscrowd"] or not w > 0 or not h > 0 or ann.get("rle") is None:
            continue
        cat = ann["category_id"]
        small, large = chosen.get(cat, (ann, ann))
        if _small_rank(plan, ann) < _small_rank(plan, small):
            small = ann
        if _large_rank(plan, ann) < _large_rank(plan, large):
            large = ann
        chosen[cat] = (small, large)
    return chosen


def _small_rank(plan, ann) -> tuple:
    return (float(ann["area"]), _annotation_key(plan.split, ann["id"]))


def _large_rank(plan, ann) -> tuple:
    return (-float(ann["area"]), _annotation_key(plan.split, ann["id"]))


def _rle(ann) -> dict:
    return {"size": ann["rle"]["size"], "counts": ann["rle"]["counts"]}


class ExamplePicker:
    """One shard's example sets (``sets``): which images could enter them, asked before each
    image is read (``request``), and the written images' thumbnails offered (``add``)."""

    def __init__(self, sets: ExampleSets):
        self.sets = sets
        # Per category, the images (``categories``) and instances (``smallest``, ``largest``)
        # that can still be among the shard's own bottom-k once all its images are seen
        # (``preselect``); None: every candidate that could enter now is asked for.
        self._preselected: dict[str, dict] | None = None

    def preselect(self, plans) -> None:
        """Looks at the whole shard's ``plans`` before any is read, and keeps as candidates
        only what can end among the shard's ``PRESELECT * K`` of smallest rank per category
        (ranks come from ids and areas, known before any decode). Without it, each category's
        set takes about ``K * (1 + ln(m / K))`` thumbnails over ``m`` images as it fills in
        image order; with it, at most ``PRESELECT * K``. The sets come out the same unless
        more than ``(PRESELECT - 1) * K`` of a category's candidates are rejected in decoding,
        and whatever the bundling (shards are fixed)."""
        ranks: dict[str, dict] = {name: collections.defaultdict(list) for name in _PRESELECTED}
        for plan in plans:
            rank = image_key(plan.split, plan.image_id)
            for cat in {ann["category_id"] for ann in plan.annotations}:
                ranks["categories"][cat].append((rank, plan.image_id))
            for ann in plan.annotations:
                w, h = ann["bbox"][2], ann["bbox"][3]
                if ann["iscrowd"] or not w > 0 or not h > 0:
                    continue
                # An area the JSON lacks is the mask's, known only once it is made: always a
                # candidate then.
                area = ann.get("area")
                key = _annotation_key(plan.split, ann["id"])
                small = (float(area), key) if area is not None else (float("-inf"), key)
                large = (-float(area), key) if area is not None else (float("-inf"), key)
                ranks["smallest"][ann["category_id"]].append((small, ann["id"]))
                ranks["largest"][ann["category_id"]].append((large, ann["id"]))
        self._preselected = {
            name: {
                group: {ident for _, ident in sorted(entries)[: PRESELECT * K[name]]}
                for group, entries in by_group.items()
            }
            for name, by_group in ranks.items()
        }

    def _candidate(self, name: str, group, ident) -> bool:
        if self._preselected is None:
            return True
        return ident in self._preselected[name].get(group, ())

    def request(self, plan, *, expected_format: str | None) -> ThumbnailRequest | None:
        """What to make of ``plan``'s image if it is decoded, or None: nothing it could enter.
        ``expected_format``: the format its file name says ("jpeg", "png"; None for another
        extension), for the extension-mismatch flag that decoding decides."""
        sets = self.sets
        rank = (image_key(plan.split, plan.image_id),)
        by_category: dict[int, list] = {}
        for ann in plan.annotations:
            if ann.get("rle") is not None:
                by_category.setdefault(ann["category_id"], []).append(_rle(ann))
        overlays = tuple(
            (cat, tuple(rles))
            for cat, rles in sorted(by_category.items())
            if self._candidate("categories", cat, plan.image_id)
            and sets.could_enter("categories", cat, rank)
        )
        known_flags = set(plan.flags) | _annotation_flags(plan)
        plain = any(sets.could_enter("flags", flag, rank) for flag in sorted(known_flags))
        rotated = any(sets.could_enter("flags", flag, rank) for flag in _ROTATION_FLAGS)
        mismatch = sets.could_enter("flags", _EXTENSION_FLAG, rank)
        crops = []
        for cat, (small, large) in sorted(_instances(plan).items()):
            wanted = {}
            if self._candidate("smallest", cat, small["id"]) and sets.could_enter(
                "smallest", cat, _small_rank(plan, small)
            ):
                wanted[small["id"]] = small
            if self._candidate("largest", cat, large["id"]) and sets.could_enter(
                "largest", cat, _large_rank(plan, large)
            ):
                wanted[large["id"]] = large
            crops += [(ann_id, tuple(a["bbox"]), _rle(a)) for ann_id, a in wanted.items()]
        if not (overlays or plain or rotated or mismatch or crops):
            return None
        return ThumbnailRequest(
            plain=plain,
            plain_if_rotated=rotated,
            plain_if_format_not=(expected_format or "") if mismatch else None,
            overlays=overlays,
            crops=tuple(crops),
        )

    def add(self, plan, facts) -> None:
        """Offers the thumbnails of a written image (``facts.thumbnails``, from decoding it
        under ``request``'s answer) to the sets; an image without them enters none."""
        thumbs = getattr(facts, "thumbnails", None)
        if thumbs is None:
            return
        sets, split, image_id = self.sets, plan.split, plan.image_id
        rank = (image_key(split, image_id),)
        for cat, jpeg in thumbs.overlays:
            sets.offer("categories", cat, (rank, split, image_id, _NO_ANNOTATION, jpeg))
        if thumbs.plain is not None:
            flags = set(plan.flags) | set(facts.flags) | _annotation_flags(plan)
            if facts.exif_orientation in (2, 3, 4, 5, 6, 7, 8):
                flags.add(EXIF_ROTATED)
            for flag in sorted(flags):
                sets.offer("flags", flag, (rank, split, image_id, _NO_ANNOTATION, thumbs.plain))
        for cat, (small, large) in _instances(plan).items():
            for name, ann, ann_rank in (
                ("smallest", small, _small_rank(plan, small)),
                ("largest", large, _large_rank(plan, large)),
            ):
                jpeg = thumbs.crop(ann["id"])
                if jpeg is not None:
                    sets.offer(name, cat, (ann_rank, split, image_id, ann["id"], jpeg))


def examples_document(sets: ExampleSets) -> dict:
    """The examples as ``stats.json`` names them (no pixels): per category its images and
    instances, per flag its images; each image as ``[split, image id]``."""

    def images(entries):
        return [[split, image_id] for _, split, image_id, _, _ in entries]

    def instance(entries, sign):
        if not entries:
            return None
        (rank, split, image_id, ann_id, _) = entries[0]
        area = sign * rank[0]  # the largest rank by minus their area
        return {"split": split, "image_id": image_id, "annotation_id": ann_id, "area": area}

    cats = sorted(set(sets.categories) | set(sets.smallest) | set(sets.largest))
    return {
        "per_category": K["categories"],
        "per_flag": K["flags"],
        "categories": [
            {
                "id": cat,
                "images": images(sets.categories.get(cat, ())),
                "smallest": instance(sets.smallest.get(cat), 1),
                "largest": instance(sets.largest.get(cat), -1),
            }
            for cat in cats
        ],
        "flags": [
            {"flag": flag, "images": images(sets.flags[flag])} for flag in sorted(sets.flags)
        ],
    }


def example_pictures(sets: ExampleSets) -> dict[str, bytes]:
    """Every thumbnail of ``sets`` by ``picture_id``."""
    pictures = {}
    for name in ExampleSets.__slots__:
        for group, entries in getattr(sets, name).items():
            for _, split, image_id, _, jpeg in entries:
                pictures[picture_id(name, group, split, image_id)] = jpeg
    return pictures
