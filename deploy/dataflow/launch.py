"""Flex Template entry point: the template launcher runs this file with the job's parameters
as ``--name=value`` arguments; they are ``coco-beam build``'s options and Beam's."""

import logging
import sys

from coco_beam.pipelines import build

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    build.run(sys.argv[1:])
