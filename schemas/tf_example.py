"""The TFRecord contract: ``tf.train.Example`` keys of TF Model Garden, and the messages themselves.

``FEATURES`` is the feature map: each key with its ``tf.train.Feature`` kind, how many values it
holds, and the Parquet column (``schemas.parquet.IMAGE_ROW``) it is taken from.
``check_against_parquet`` proves every source column exists with a type that fits the kind; it
runs at import, so the two contracts cannot drift apart silently.

The messages are built from a transcription of TensorFlow's public ``feature.proto`` and
``example.proto`` (package ``tensorflow``, same names and field numbers) into a private
descriptor pool: serializing an Example needs only ``protobuf``, never TensorFlow, and the pool
does not collide with TensorFlow's own when both are loaded in one process.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from coco_beam.schemas.fields import Image, ListOf, Struct, Value
from coco_beam.schemas.parquet import IMAGE_ROW

__all__ = [
    "FEATURES",
    "BytesList",
    "Example",
    "Feature",
    "FeatureSpec",
    "FloatList",
    "Int64List",
    "check_against_parquet",
]


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    key: str
    kind: str  # int64, float, bytes: the tf.train.Feature list it fills
    count: str  # "one" per image, "object" one per instance, "keypoint" one per joint, "any"
    source: str  # the Parquet column, dotted into structs and lists
    # "masks": only with --tfrecord-masks; "keypoints": splits with keypoints; "panoptic":
    # images with a panoptic record
    optional: str = ""
    via: str = ""  # a conversion on the way (see _VIA); none: the column's value as it is


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("image/height", "int64", "one", "height"),
    FeatureSpec("image/width", "int64", "one", "width"),
    FeatureSpec("image/filename", "bytes", "one", "file_name"),
    FeatureSpec("image/source_id", "bytes", "one", "image_id", via="decimal"),
    FeatureSpec("image/key/sha256", "bytes", "one", "sha256"),
    FeatureSpec("image/encoded", "bytes", "one", "image.bytes"),
    FeatureSpec("image/format", "bytes", "one", "format"),
    # Normalized to [0, 1] (clipped; the Parquet row keeps the original and its flags).
    FeatureSpec("image/object/bbox/xmin", "float", "object", "annotations.bbox", via="normalized"),
    FeatureSpec("image/object/bbox/xmax", "float", "object", "annotations.bbox", via="normalized"),
    FeatureSpec("image/object/bbox/ymin", "float", "object", "annotations.bbox", via="normalized"),
    FeatureSpec("image/object/bbox/ymax", "float", "object", "annotations.bbox", via="normalized"),
    FeatureSpec("image/object/class/label", "int64", "object", "annotations.category_id"),
    FeatureSpec(
        "image/object/class/text", "bytes", "object", "annotations.category_id", via="name"
    ),
    FeatureSpec("image/object/is_crowd", "int64", "object", "annotations.iscrowd"),
    FeatureSpec("image/object/area", "float", "object", "annotations.area"),
    # One full-image PNG per instance, values 0/1: pycocotools' mask of the instance's RLE.
    FeatureSpec(
        "image/object/mask", "bytes", "object", "annotations.rle", optional="masks", via="png"
    ),
    FeatureSpec("image/caption", "bytes", "any", "captions.caption"),
    # As Model Garden and the Object Detection API write them: every object of an image with
    # keypoint annotations gets the joints of its category, zeros and visibility 0 where the
    # object has none; x and y normalized.
    FeatureSpec(
        "image/object/keypoint/x",
        "float",
        "keypoint",
        "annotations.keypoints",
        "keypoints",
        via="normalized",
    ),
    FeatureSpec(
        "image/object/keypoint/y",
        "float",
        "keypoint",
        "annotations.keypoints",
        "keypoints",
        via="normalized",
    ),
    FeatureSpec(
        "image/object/keypoint/visibility",
        "int64",
        "keypoint",
        "annotations.keypoints",
        "keypoints",
        via="visibility",
    ),
    FeatureSpec(
        "image/object/keypoint/num", "int64", "object", "annotations.num_keypoints", "keypoints"
    ),
    # Joint names come from the category (categories.parquet); the source is the joint itself.
    FeatureSpec(
        "image/object/keypoint/text",
        "bytes",
        "keypoint",
        "annotations.keypoints",
        "keypoints",
        via="joint_name",
    ),
    # Images with a panoptic record: Model Garden's label maps, grey PNGs of each pixel's
    # category id (0: void) and of the thing segments' index in segments_info plus one.
    FeatureSpec(
        "image/panoptic/category_mask",
        "bytes",
        "one",
        "panoptic.segments.rle",
        "panoptic",
        via="png",
    ),
    FeatureSpec(
        "image/panoptic/instance_mask",
        "bytes",
        "one",
        "panoptic.segments.rle",
        "panoptic",
        via="png",
    ),
)


# Which Parquet leaf types each kind may be taken from as they are...
_FITS = {
    "int64": {"int8", "int32", "int64", "bool"},
    "float": {"float32", "float64"},
    "bytes": {"string", "binary"},
}
# ... and through each conversion: an id written as decimal text, a category id looked up to
# its name, a box or keypoint coordinate divided by the image side, the visibility of a
# keypoint triplet, the joint's name from its category, an RLE encoded as a PNG mask.
_VIA = {
    "decimal": {"int64"},
    "name": {"int64"},
    "normalized": {"float64"},
    "visibility": {"float64"},
    "joint_name": {"float64"},
    "png": {"struct"},
}


def _leaf(node, path: list[str]):
    """The node at ``path`` in ``node``, going through lists; None if there is none."""
    while isinstance(node, ListOf):
        node = node.item
    if not path:
        return node
    if isinstance(node, Struct):
        fields = dict(node.fields)
        return _leaf(fields[path[0]], path[1:]) if path[0] in fields else None
    if isinstance(node, Image) and path == ["bytes"]:
        return Value("binary")
    return None


def check_against_parquet(features=FEATURES, row: Struct = IMAGE_ROW) -> None:
    """Raises ``ValueError`` naming every feature whose source column is missing from ``row``
    or whose type cannot fill the feature's kind."""
    problems = []
    for spec in features:
        leaf = _leaf(row, spec.source.split("."))
        while isinstance(leaf, ListOf):
            leaf = leaf.item
        if leaf is None:
            problems.append(f"{spec.key}: no column {spec.source}")
            continue
        dtype = leaf.dtype if isinstance(leaf, Value) else "struct"
        fits = _VIA[spec.via] if spec.via else _FITS[spec.kind]
        if dtype not in fits:
            problems.append(f"{spec.key}: {spec.source} is {dtype}, not a {spec.kind} source")
    if problems:
        raise ValueError(
            "the TFRecord feature map and the Parquet schema disagree: " + "; ".join(problems)
        )


check_against_parquet()


def _file() -> descriptor_pb2.FileDescriptorProto:
    """tensorflow/core/example/feature.proto and example.proto, the messages Example needs."""
    f = descriptor_pb2.FileDescriptorProto(
        name="coco_beam/tensorflow_example.proto", package="tensorflow", syntax="proto3"
    )
    label_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    label_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    t = descriptor_pb2.FieldDescriptorProto
    for name, ftype, packed in (
        ("BytesList", t.TYPE_BYTES, False),
        ("FloatList", t.TYPE_FLOAT, True),
        ("Int64List", t.TYPE_INT64, True),
    ):
        msg = f.message_type.add(name=name)
        field = msg.field.add(name="value", number=1, label=label_rep, type=ftype)
        if packed:
            field.options.packed = True
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, type_name) in enumerate(
        (("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")),
        start=1,
    ):
        feature.field.add(
            name=name,
            number=number,
            label=label_opt,
            type=t.TYPE_MESSAGE,
            type_name=f".tensorflow.{type_name}",
            oneof_index=0,
        )
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=label_opt, type=t.TYPE_STRING)
    entry.field.add(
        name="value",
        number=2,
        label=label_opt,
        type=t.TYPE_MESSAGE,
        type_name=".tensorflow.Feature",
    )
    features.field.add(
        name="feature",
        number=1,
        label=label_rep,
        type=t.TYPE_MESSAGE,
        type_name=".tensorflow.Features.FeatureEntry",
    )
    example = f.message_type.add(name="Example")
    example.field.add(
        name="features",
        number=1,
        label=label_opt,
        type=t.TYPE_MESSAGE,
        type_name=".tensorflow.Features",
    )
    return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
BytesList, FloatList, Int64List, Feature, Example = (
    message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tensorflow.{name}"))
    for name in ("BytesList", "FloatList", "Int64List", "Feature", "Example")
)
