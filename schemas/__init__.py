"""Data contracts of coco-beam: the Parquet schema, element types and reason codes.

Every other package imports column names, element types and reason codes from here;
nobody re-spells them.
"""
