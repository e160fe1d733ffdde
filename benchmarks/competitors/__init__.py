"""The servers bake is measured against, each serving the same model from a local directory."""
