"""``python -m jaxcnn``: the ``jaxcnn`` command (:func:`jaxcnn.cli.main`)."""

import sys

from jaxcnn.cli import main

sys.exit(main())
