"""Reusable PTransforms of coco-beam, each a thin Beam skin over a pure, unit-tested core."""
