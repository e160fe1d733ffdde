"""Where the image's Python packages come from: package indexes, PyTorch's CPU wheels, a local wheel folder.

A CPU image gets a CPU torch of a tested version whatever index is configured: the torch wheel is pinned with
its `+cpu` label (and so is torchvision's, when the model needs it: PyPI's torchvision is built for a CUDA
torch) and installed on its own, from a matching wheel in the --pip-find-links folder when there is
one (no network), else from PyTorch's CPU index or the --torch-index-url mirror of it. It never comes from the
package index: PyPI's (and every PyPI mirror's) torch is a CUDA build with 3 GB of NVIDIA libraries. The
weights stage's conversion of .bin files uses the same CPU torch, whatever the image's device.

Before a build, `check_reachable` probes every configured index once (one HEAD, a few seconds at most): an
extra index that does not answer is left out with a warning; the package index, if a wheel folder is given,
too (the build then installs from the folder alone); otherwise the build stops at once with the flag that
fixes it, instead of spending minutes in the installer's retries. With a remote Docker engine the probe is
only a hint (the engine may see other networks), so it warns and changes nothing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from bake.config import BuildSpec
from bake.errors import BuildFailed, ConfigError

PYPI = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""PyTorch's index of CPU wheels: where a CPU image's torch comes from unless a wheel folder holds it."""
CPU_TORCH_VERSION = "2.13.0"
"""The torch version bake is tested with: a CPU image's torch unless --torch-version says otherwise."""
_TORCHVISION_MINOR_OFFSET = 15
"""torchvision 0.15 was released with torch 2.0, and every torch 2.x release since has its torchvision
0.(x + 15) with the same patch number (torch 2.13.0: torchvision 0.28.0)."""
WHEELS_MOUNT = "/wheels"
"""Where the --pip-find-links folder is mounted in the install steps."""
PROBE_TIMEOUT_S = 5.0
_REMOTE_ENGINE_SCHEMES = ("ssh://", "tcp://", "http://", "https://")


@dataclass(frozen=True)
class PackageSources:
    """The indexes and folders the install steps read (URLs may hold credentials: never in a layer)."""

    index_url: str | None
    """The package index; None: none, the wheel folder alone."""
    extra_index_urls: tuple[str, ...]
    find_links: bool
    """Whether the --pip-find-links folder is mounted at WHEELS_MOUNT."""
    torch_requirement: str | None
    """The CPU torch pin (torch==2.13.0+cpu) when the build installs a CPU torch, else None."""
    torch_index_url: str | None
    """The index the CPU torch comes from; None: the wheel folder (a matching wheel is in it)."""
    torchvision_requirement: str | None = None
    """The CPU torchvision pin (torchvision==0.28.0+cpu) when the model needs torchvision, else None."""

    @property
    def cpu_builds(self) -> tuple[str, ...]:
        """The CPU builds installed first, alone, from the torch sources: torch (and torchvision)."""
        return tuple(pin for pin in (self.torch_requirement, self.torchvision_requirement) if pin)

    @property
    def urls(self) -> tuple[str, ...]:
        """Every index URL the install steps may reach."""
        torch = (self.torch_index_url,) if self.torch_requirement and self.torch_index_url else ()
        return tuple(url for url in (self.index_url, *self.extra_index_urls, *torch) if url)

    def package_args(self) -> list[str]:
        """Installer arguments (pip's and uv's share them) for the runtime's packages."""
        args = ["--index-url", self.index_url] if self.index_url else ["--no-index"]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        return args + (["--find-links", WHEELS_MOUNT] if self.find_links else [])

    def torch_args(self) -> list[str]:
        """Installer arguments for the CPU torch (empty when no CPU torch is installed)."""
        if not self.torch_requirement:
            return []
        args = ["--index-url", self.torch_index_url] if self.torch_index_url else ["--no-index"]
        return args + (["--find-links", WHEELS_MOUNT] if self.find_links else [])

    def describe(self) -> str:
        """The sources without credentials, one per line: a deps stage file, so a change rebuilds it."""
        lines = ["packages: " + " ".join(redact(arg) for arg in self.package_args())]
        if self.cpu_builds:
            lines.append(
                f"{' '.join(self.cpu_builds)}: " + " ".join(redact(arg) for arg in self.torch_args())
            )
        return "\n".join(lines) + "\n"


def configured_sources(build: BuildSpec, *, cpu_torch: bool, cpu_torchvision: bool = False) -> PackageSources:
    """The sources the settings name (nothing probed). `cpu_torch`: the build installs a CPU torch;
    `cpu_torchvision`: and the CPU torchvision that goes with it."""
    torch_requirement = torchvision_requirement = torch_index = None
    if cpu_torch:
        version = (build.torch_version if build.device == "cpu" else "") or CPU_TORCH_VERSION
        version = version.split("+", 1)[0]
        wheels = {"torch": version}
        if cpu_torchvision:
            wheels["torchvision"] = torchvision_version(version)
            torchvision_requirement = f"torchvision=={wheels['torchvision']}+cpu"
        torch_requirement = f"torch=={version}+cpu"
        local = build.pip_find_links is not None and all(
            any(build.pip_find_links.glob(f"{name}-{pinned}+cpu-*.whl")) for name, pinned in wheels.items()
        )
        torch_index = None if local else (build.torch_index_url or TORCH_CPU_INDEX)
    return PackageSources(
        index_url=build.pip_index_url or PYPI,
        extra_index_urls=tuple(build.pip_extra_index_urls),
        find_links=build.pip_find_links is not None,
        torch_requirement=torch_requirement,
        torch_index_url=torch_index,
        torchvision_requirement=torchvision_requirement,
    )


def torchvision_version(torch_version: str) -> str:
    """The torchvision release that goes with `torch_version` (2.13.0 -> 0.28.0)."""
    major, minor, patch = (torch_version.split("+", 1)[0].split(".") + ["0", "0"])[:3]
    if major != "2":
        raise ConfigError(
            f"no torchvision is known to go with torch {torch_version}", "pass --torch-version 2.x.y"
        )
    return f"0.{int(minor) + _TORCHVISION_MINOR_OFFSET}.{patch}"


def is_remote_engine(docker_host: str) -> bool:
    """Whether DOCKER_HOST names an engine on another machine (it may reach networks this one does not)."""
    return docker_host.startswith(_REMOTE_ENGINE_SCHEMES)


def check_reachable(
    sources: PackageSources, *, ca_cert: Path | None, remote_engine: bool, timeout: float = PROBE_TIMEOUT_S
) -> tuple[PackageSources, list[str]]:
    """Probe every index of `sources` once; return the sources to build with and the warnings to print.

    Raises `BuildFailed` (one line, with the flag that fixes it) when the package index or the CPU torch's
    index does not answer and no wheel folder can stand in; with `remote_engine`, only warns.
    """
    warnings: list[str] = []
    probe = _Prober(ca_cert, timeout)
    if remote_engine:
        for url in dict.fromkeys(sources.urls):
            if reason := probe(url):
                warnings.append(
                    f"{redact(url)} does not answer from here ({reason}); building anyway, since the "
                    "remote Docker engine may reach it"
                )
        return sources, warnings
    if sources.index_url and (reason := probe(sources.index_url)):
        if not sources.find_links:
            raise BuildFailed(
                f"the package index {redact(sources.index_url)} cannot be reached ({reason})",
                _index_fix(
                    reason,
                    "--pip-index-url with a mirror you can reach, or --pip-find-links "
                    "with a folder of wheels",
                ),
            )
        warnings.append(
            f"the package index {redact(sources.index_url)} cannot be reached ({reason}): installing "
            "from the --pip-find-links folder alone"
        )
        sources = replace(sources, index_url=None)
    extras = []
    for url in sources.extra_index_urls:
        if reason := probe(url):
            warnings.append(f"the extra package index {redact(url)} cannot be reached ({reason}): left out")
        else:
            extras.append(url)
    sources = replace(sources, extra_index_urls=tuple(extras))
    if sources.torch_requirement and sources.torch_index_url and (reason := probe(sources.torch_index_url)):
        wheels = ", ".join(f"{pin.replace('==', '-')}-*.whl" for pin in sources.cpu_builds)
        raise BuildFailed(
            f"PyTorch's CPU wheel index {redact(sources.torch_index_url)} cannot be reached ({reason}), "
            "and a CPU image never takes torch from the package index (its torch is a CUDA build)",
            _index_fix(
                reason,
                f"--torch-index-url with a mirror of {TORCH_CPU_INDEX}, or --pip-find-links with "
                f"a folder holding {wheels}",
            ),
        )
    return sources, warnings


def probe(url: str, *, ca_cert: Path | None, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the index at `url` answers an HTTP HEAD (any status below 500), else why not, in a few words.

    Only http(s) URLs are probed (anything else counts as answering). `ca_cert` replaces the default trust, as
    in the build steps.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        return None
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else True
    try:
        with httpx.Client(verify=verify, timeout=timeout, follow_redirects=True) as client:
            status = client.head(url.rstrip("/") + "/").status_code
    except httpx.TimeoutException:
        return f"no answer within {timeout:g} s"
    except httpx.TransportError as error:
        return _transport_reason(error)
    return f"HTTP {status}" if status >= 500 else None


def redact(url: str) -> str:
    """`url` without its user and password (an index URL may carry a token there)."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class _Prober:
    """`probe` with fixed trust and timeout, asking each URL once."""

    def __init__(self, ca_cert: Path | None, timeout: float) -> None:
        self._ca_cert, self._timeout = ca_cert, timeout
        self._seen: dict[str, str | None] = {}

    def __call__(self, url: str) -> str | None:
        if url not in self._seen:
            self._seen[url] = probe(url, ca_cert=self._ca_cert, timeout=self._timeout)
        return self._seen[url]


def _transport_reason(error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "its TLS certificate is not trusted"
    if isinstance(error, httpx.ConnectError):
        return "connection failed: " + text.split("] ", 1)[-1]
    return text


def _index_fix(reason: str, otherwise: str) -> str:
    if "certificate" in reason:
        return "pass --ca-cert with the CA bundle of your TLS-inspecting proxy"
    return "pass " + otherwise
