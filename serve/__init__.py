"""bake's serving runtime: the HTTP server that runs inside every image bake builds.

Run it with `python -m serve`; it is configured entirely by environment variables (see
`serve.contract.settings`). It never imports `bake`; `bake` and `fly` import only `serve.contract`, the
torch-free contract of the image.
"""

__version__ = "0.1.0"
