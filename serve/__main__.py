"""`python -m serve` runs the model server.

Settings are read before the heavy imports (torch, transformers) so that a bad value fails in
milliseconds, with one line naming the variable, and exit status 2.
"""

import sys

from serve.contract.errors import SettingsError
from serve.contract.settings import Settings

try:
    settings = Settings.from_env()
except SettingsError as error:
    print(f"serve: {error}", file=sys.stderr)
    sys.exit(2)

from serve.server import run  # noqa: E402 - deliberately after the settings check

sys.exit(run(settings))
