"""Fly.io for bake: fly.toml generation (round-trip safe) and deploys through flyctl or the Machines API.

A library bake calls; it never imports `bake`, and of `serve` only the torch-free image contract
(`serve.contract`: routes, the offline variables, the error format). Everything starts from a
`FlyServiceSpec`:

    spec = FlyServiceSpec(app="resnet", image="bake/resnet-50:3f2a", max_batch_size=8, max_queue=256,
                          warmup_seconds=12.0, drain_seconds=30.0, weights_bytes=102_000_000)
    render_fly_toml(spec, existing_text)                       # pure: the fly.toml text
    deploy(spec, token_from_env(), fly_toml="fly.toml")        # write fly.toml, then deploy
"""

from fly.auth import TOKEN_ENV, token_from_env
from fly.deploy import DeployResult, deploy, flyctl_command
from fly.errors import FlyApiError, FlyAuthError, FlyConfigError, FlyError, FlyGpuUnsupported
from fly.machines import DEFAULT_API_URL, FlyMachines, machine_config
from fly.registry import FLY_REGISTRY, push_image, remote_reference
from fly.spec import (
    Concurrency,
    FlyServiceSpec,
    VmSize,
    app_url,
    check_grace_period_s,
    check_no_gpu,
    concurrency_limits,
    kill_timeout_s,
    runtime_env,
    vm_size,
)
from fly.toml import FLY_TOML, render_fly_toml, write_fly_toml

__all__ = [
    "DEFAULT_API_URL",
    "FLY_REGISTRY",
    "FLY_TOML",
    "TOKEN_ENV",
    "Concurrency",
    "DeployResult",
    "FlyApiError",
    "FlyAuthError",
    "FlyConfigError",
    "FlyError",
    "FlyGpuUnsupported",
    "FlyMachines",
    "FlyServiceSpec",
    "VmSize",
    "app_url",
    "check_grace_period_s",
    "check_no_gpu",
    "concurrency_limits",
    "deploy",
    "flyctl_command",
    "kill_timeout_s",
    "machine_config",
    "push_image",
    "remote_reference",
    "render_fly_toml",
    "runtime_env",
    "token_from_env",
    "vm_size",
    "write_fly_toml",
]
