"""``python -m jaxcnn``: the ``jaxcnn`` command (:func:`jaxcnn.cli.main`)."""

import sys

from jaxcnn.cli import main

if __name__ == "__main__":
    sys.exit(main())
