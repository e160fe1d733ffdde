"""`python -m serve` runs the model server."""

import sys

from serve.server import main

sys.exit(main())
