"""Reading and joining: the annotation files streamed and checked record by record, then
joined per image (``ReadCocoAnnotations``, ``JoinAnnotationsToImages``)."""
