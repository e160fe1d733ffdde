"""`bake launch` and friends: putting a built image on a container host, and managing what runs there.

Targets: `local` and `docker` (a Docker engine, here or remote: `docker_target`), `fly` (`fly_target`, over
the `fly` package) and `kubernetes` (`kubernetes`: Knative or KServe manifests). The image's labels say
what it serves and how (`bake.labels`), so launching asks for nothing the build already knew.
"""
