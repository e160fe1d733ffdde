"""bake's test suite."""
