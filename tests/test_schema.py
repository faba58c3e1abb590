"""The Parquet contract: Hugging Face features and Arrow types are one description."""

import json

import datasets
import pyarrow as pa

from coco_beam.schemas.parquet import COLUMNS, arrow_schema, hf_features


def test_hf_features_render_exactly_the_arrow_schema():
    schema = arrow_schema([{"id": 1, "name": "person"}])
    features = datasets.Features.from_dict(hf_features())
    assert features.arrow_schema.names == list(COLUMNS)
    for field in schema:
        assert features.arrow_schema.field(field.name).type == field.type, field.name
    # datasets keeps the metadata's feature only where types match exactly: Image must survive.
    restored = datasets.Features.from_arrow_schema(schema)
    assert isinstance(restored["image"], datasets.Image)
    assert json.loads(schema.metadata[b"coco_beam"])["categories"][0]["name"] == "person"


def test_image_column_is_binary_not_large_binary():
    image = arrow_schema().field("image").type
    assert image == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
