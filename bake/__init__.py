"""bake: turn a Hugging Face model id into a production container image with the weights baked in.

The host side: CLI, configuration, Hub resolution, the BuildKit build and the launch targets. It never
imports torch or the `serve` runtime that ships inside the image.
"""

__version__ = "0.1.0"
