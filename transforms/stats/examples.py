"""The report's example images: small, mergeable bottom-k sets of thumbnails.

What a person curating the data wants to look at: a few images of each category with that
category's masks drawn over them, a few images carrying each warning flag, and each
category's smallest and largest instance. Each set keeps the ``K[set]`` entries of smallest
rank: an image's rank is a hash of ``(split, image_id)`` (``image_key``), an instance's its
``area`` then a hash of ``(split, annotation id)``. The k smallest of a union are the k smallest
of the parts' k smallest, so ``ExampleSets.merge`` (union, then keep k) is exact, associative
and commutative: the same data gives the same examples whatever the runner, shards or bundles.

Which images can end in a set is known from ids and areas before any image is read:
``PreselectExamples`` keeps each category's ``PRESELECT * K`` candidates of smallest rank over
the whole dataset (``Preselection``, itself a bounded, mergeable bottom-k), so thumbnails are
made for a few hundred images whatever the number of images and shards. A shard writer holds
one ``ExamplePicker``. Before an image is read it asks ``request``: the image is a candidate
of a set only if it was preselected and its rank is below the k-th smallest the shard holds so
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
    "Preselection",
    "example_pictures",
    "examples_document",
    "image_key",
    "picture_id",
    "preselection_ranks",
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


def preselection_ranks(plan):
    """``(set, group, rank, ident)`` of every candidate ``plan`` offers to the preselected sets:
    the image to each of its categories (``categories``, ident its split and id), and each
    instance with a box, not a crowd, to its category's ``smallest`` and ``largest`` (ident
    its split and annotation id). An instance whose JSON lacks its area has none to rank by
    before its mask is made: it comes as ``(set, group, None, None)``, and every instance of
    its category is then a candidate of ``smallest`` and ``largest``."""
    rank = image_key(plan.split, plan.image_id)
    for cat in {ann["category_id"] for ann in plan.annotations}:
        yield "categories", cat, rank, (plan.split, plan.image_id)
    for ann in plan.annotations:
        w, h = ann["bbox"][2], ann["bbox"][3]
        if ann["iscrowd"] or not w > 0 or not h > 0:
            continue
        area = ann.get("area")
        if area is None:
            yield "smallest", ann["category_id"], None, None
            yield "largest", ann["category_id"], None, None
            continue
        key = _annotation_key(plan.split, ann["id"])
        ident = (plan.split, ann["id"])
        yield "smallest", ann["category_id"], (float(area), key), ident
        yield "largest", ann["category_id"], (-float(area), key), ident


class Preselection:
    """Per preselected set and group, the ``PRESELECT * K`` candidates of smallest rank seen:
    a bounded bottom-k (at most ``PRESELECT * K`` entries per category and set, whatever the
    number of images), so ``merge`` is exact, associative and commutative. A category with an
    instance of no area is ``open``: all its instances are candidates."""

    __slots__ = ("entries", "open")

    def __init__(self):
        self.entries = {name: {} for name in _PRESELECTED}  # set -> group -> [(rank, ident)]
        self.open = set()  # categories with an instance the JSON gives no area

    def add_plans(self, plans) -> None:
        found: dict = {name: collections.defaultdict(list) for name in _PRESELECTED}
        for plan in plans:
            for name, group, rank, ident in preselection_ranks(plan):
                if rank is None:
                    self.open.add(group)
                else:
                    found[name][group].append((rank, ident))
        self._keep(found)

    def merge(self, other: Preselection) -> None:
        self._keep(other.entries)
        self.open |= other.open

    def _keep(self, found: dict) -> None:
        for name, by_group in found.items():
            mine, k = self.entries[name], PRESELECT * K[name]
            for group, entries in by_group.items():
                mine[group] = sorted({*mine.get(group, ()), *entries})[:k]

    def chosen(self) -> dict:
        """Set -> group -> the candidates' idents, and ``open``: the open categories (what
        ``ExamplePicker.preselect`` takes)."""
        chosen = {
            name: {group: frozenset(i for _, i in entries) for group, entries in by.items()}
            for name, by in self.entries.items()
        }
        chosen["open"] = frozenset(self.open)
        return chosen


class ExamplePicker:
    """One shard's example sets (``sets``): which images could enter them, asked before each
    image is read (``request``), and the written images' thumbnails offered (``add``)."""

    def __init__(self, sets: ExampleSets):
        self.sets = sets
        # Per category, the images (``categories``) and instances (``smallest``, ``largest``)
        # that can still be among the dataset's (or the shard's) bottom-k once all images are
        # seen (``preselect``); None: every candidate that could enter now is asked for.
        self._preselected: dict[str, dict] | None = None

    def preselect(self, plans, chosen: dict | None = None) -> None:
        """Keeps as candidates only what can end among the ``PRESELECT * K`` of smallest rank
        per category: of the whole dataset when ``chosen`` is given (``Preselection.chosen``
        of every plan, which ``PreselectExamples`` gathers before any image is read), else of
        this shard's ``plans`` (ranks come from ids and areas, known before any decode).
        Without it, each category's set takes about ``K * (1 + ln(m / K))`` thumbnails over
        ``m`` images as it fills in image order; per shard, at most ``PRESELECT * K``; over
        the dataset, at most ``PRESELECT * K`` in all shards together. The sets come out the
        same unless more than ``(PRESELECT - 1) * K`` of a category's candidates are rejected
        in decoding, and whatever the bundling (shards are fixed)."""
        if chosen is None:
            preselection = Preselection()
            preselection.add_plans(plans)
            chosen = preselection.chosen()
        self._preselected = chosen

    def _candidate(self, name: str, group, ident) -> bool:
        if self._preselected is None:
            return True
        if name != "categories" and group in self._preselected["open"]:
            return True
        return ident in self._preselected[name].get(group, ())

    def _crop_candidates(self, plan) -> dict:
        """``_instances(plan)``, or nothing when none of its instances was preselected (most
        images: the check costs a set lookup per instance, not two hashes)."""
        if self._preselected is not None:
            chosen, split = self._preselected, plan.split
            if not any(
                ann["category_id"] in chosen["open"]
                or (split, ann["id"]) in chosen["smallest"].get(ann["category_id"], ())
                or (split, ann["id"]) in chosen["largest"].get(ann["category_id"], ())
                for ann in plan.annotations
            ):
                return {}
        return _instances(plan)

    def request(self, plan, *, expected_format: str | None) -> ThumbnailRequest | None:
        """What to make of ``plan``'s image if it is decoded, or None: nothing it could enter.
        ``expected_format``: the format its file name says ("jpeg", "png"; None for another
        extension), for the extension-mismatch flag that decoding decides."""
        sets = self.sets
        rank = (image_key(plan.split, plan.image_id),)
        image = (plan.split, plan.image_id)
        drawn = {ann["category_id"] for ann in plan.annotations if ann.get("rle") is not None}
        overlays = tuple(
            (
                cat,
                tuple(
                    _rle(a)
                    for a in plan.annotations
                    if a["category_id"] == cat and a.get("rle") is not None
                ),
            )
            for cat in sorted(drawn)
            if self._candidate("categories", cat, image)
            and sets.could_enter("categories", cat, rank)
        )
        known_flags = set(plan.flags) | _annotation_flags(plan)
        plain = any(sets.could_enter("flags", flag, rank) for flag in sorted(known_flags))
        rotated = any(sets.could_enter("flags", flag, rank) for flag in _ROTATION_FLAGS)
        mismatch = sets.could_enter("flags", _EXTENSION_FLAG, rank)
        crops = []
        for cat, (small, large) in sorted(self._crop_candidates(plan).items()):
            wanted = {}
            for name, ann, ann_rank in (
                ("smallest", small, _small_rank(plan, small)),
                ("largest", large, _large_rank(plan, large)),
            ):
                ident = (plan.split, ann["id"])
                if self._candidate(name, cat, ident) and sets.could_enter(name, cat, ann_rank):
                    wanted[ann["id"]] = ann
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
        for cat, (small, large) in (_instances(plan) if thumbs.crops else {}).items():
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
