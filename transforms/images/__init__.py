"""Images and masks: decoding and checking image files, polygons and RLE to masks, panoptic
PNGs (``RasterizeMasks`` and the pure functions the shard writer calls)."""
