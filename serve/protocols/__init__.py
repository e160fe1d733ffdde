"""The wire protocols a bake server speaks: one thin module each over the one `Runtime.predict` path.

Each protocol turns its requests into an input and the task's parameters, calls the runtime, and renders
the result (and `RequestError`s) in its own shapes. `serve.app` mounts them.
"""
