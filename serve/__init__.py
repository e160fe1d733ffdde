"""bake's serving runtime: the HTTP server that runs inside every image bake builds.

Run it with `python -m serve`; it is configured entirely by environment variables (see
`serve.settings`). It never imports `bake`.
"""

__version__ = "0.1.0"
