"""A tiny type description from which the Arrow schema and the Hugging Face features are generated.

One description, two renderings: ``arrow()`` gives the ``pyarrow`` type and ``hf()`` the JSON that
``datasets`` reads from the ``huggingface`` schema metadata. ``datasets`` keeps a column's feature
only where the Arrow type it derives from the feature equals the file's type exactly, so both are
rendered from the same node and a test checks the round trip.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

__all__ = ["Image", "ListOf", "Struct", "Value"]

_ARROW_SCALARS = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
}


@dataclasses.dataclass(frozen=True)
class Value:
    """A scalar column or struct field."""

    dtype: str

    def arrow(self) -> pa.DataType:
        return _ARROW_SCALARS[self.dtype]

    def hf(self) -> dict:
        return {"dtype": self.dtype, "_type": "Value"}


@dataclasses.dataclass(frozen=True)
class Image:
    """Hugging Face's image feature: ``struct<bytes: binary, path: string>``, decoded on access."""

    def arrow(self) -> pa.DataType:
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def hf(self) -> dict:
        return {"_type": "Image"}


@dataclasses.dataclass(frozen=True)
class ListOf:
    """A list; with ``length`` a fixed-size list (a bbox, an RLE size).

    A list of structs renders as the JSON-list form (``[{...}]``), which ``datasets`` reads as a
    list of dicts; ``Sequence`` of a dict would turn into a dict of lists instead.
    """

    item: Value | Struct
    length: int | None = None

    def arrow(self) -> pa.DataType:
        if self.length is not None:
            return pa.list_(self.item.arrow(), self.length)
        return pa.list_(self.item.arrow())

    def hf(self):
        if isinstance(self.item, Struct):
            return [self.item.hf()]
        out = {"feature": self.item.hf(), "_type": "Sequence"}
        if self.length is not None:
            out["length"] = self.length
        return out


@dataclasses.dataclass(frozen=True)
class Struct:
    """A struct with ordered fields."""

    fields: tuple[tuple[str, Value | Image | ListOf | Struct], ...]

    def arrow(self) -> pa.DataType:
        return pa.struct([(name, node.arrow()) for name, node in self.fields])

    def hf(self) -> dict:
        return {name: node.hf() for name, node in self.fields}
