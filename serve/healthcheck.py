"""`python -m serve.healthcheck`: exit 0 when the local server's /health answers 200 (the image's
HEALTHCHECK).

Standard library only, so the check costs a few milliseconds and no torch import.
"""

import sys
import urllib.request

from serve.contract import routes
from serve.contract.errors import SettingsError
from serve.contract.settings import Settings


def main() -> int:
    """0 if /health answers 200 on the configured port, else 1."""
    try:
        port = Settings.from_env().port
    except SettingsError:
        return 1
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{routes.HEALTH}", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
