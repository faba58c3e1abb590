"""Pipeline composition, options and the ``coco-beam`` command line."""
