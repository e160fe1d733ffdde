"""The contract of a bake image: every fact that `bake` (the host CLI), `fly` and `serve` (the runtime inside
the image) share, in one torch-free package, as huggingface_hub keeps its constants in one module.

Each module has one job; import them by name (`from serve.contract import settings`). Nothing here imports
torch, transformers, FastAPI or anything beyond the standard library, so the host CLI can import it.
"""
