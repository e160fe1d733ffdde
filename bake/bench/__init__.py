"""`bake bench`: find the batching and concurrency settings for this model on this machine.

A ramp of closed-loop load levels against a running server (`ramp`, with the load generator in `loadgen`
and the server's own view from its `/metrics` in `metrics`), a recommendation for a latency budget
(`advice`), and the table, plots and JSON that report it (`report`). The host side only: no torch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from bake.bench.advice import Advice, advise, write_advice, write_comment
from bake.bench.inputs import request_for
from bake.bench.loadgen import Generator, Target, wrk_available
from bake.bench.ramp import Progress, Ramp, ServerFacts, default_levels, fetch_facts, run_ramp, within
from bake.errors import BenchFailed, ConfigError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANSWERS_PER_LEVEL = 5
"""A level lasts at least this many times one request's latency alone (text-to-image takes seconds)."""


@dataclass(frozen=True)
class BenchOptions:
    """What `bake bench` was asked to do."""

    url: str
    p99_ms: float | None = None
    levels: tuple[int, ...] = ()
    """Concurrency levels; empty: `ramp.default_levels` of the server's max_batch_size."""
    seconds: float = 10.0
    warmup_s: float = 3.0
    client: Literal["auto", "wrk", "httpx"] = "auto"
    image: Path | None = None
    prompt: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BenchResult:
    """Everything measured and concluded."""

    facts: ServerFacts
    request: str
    """What each request carried, in words."""
    generator: Generator
    ramp: Ramp
    advice: Advice | None
    verdict: str
    method: str
    warnings: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON of `bake bench --json`."""
        return {
            "server": vars(self.facts),
            "request": self.request,
            "generator": self.generator,
            "budget": {"p99_ms": self.ramp.budget.p99_ms, "origin": self.ramp.budget.origin},
            "levels": [
                {
                    "concurrency": level.concurrency,
                    "within_budget": within(level, self.ramp.budget),
                    "client": level.load.as_dict(),
                    "server": level.server.as_dict() if level.server else None,
                    "client_limited": level.client_limits(),
                }
                for level in self.ramp.levels
            ],
            "stopped": self.ramp.stopped,
            "recommendation": self.advice.as_dict() if self.advice else None,
            "verdict": self.verdict,
            "method": self.method,
            "warnings": list(self.warnings),
        }


def bench(options: BenchOptions, progress: Progress) -> BenchResult:
    """Measure the server at `options.url` and recommend settings; raise `BenchFailed` if it cannot."""
    if options.seconds <= 0 or options.warmup_s < 0:
        raise ConfigError("--duration must be positive and --warmup not negative")
    if any(level < 1 for level in options.levels):
        raise ConfigError("concurrency levels must be at least 1", "pass e.g. --concurrency 1,2,4,8")
    url = options.url.rstrip("/")
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    generator = _generator(options.client)
    with httpx.Client(headers=headers) as client:
        facts = fetch_facts(client, url)
        target, request = request_for(
            facts.task,
            url,
            image=options.image,
            prompt=options.prompt,
            parameters=dict(options.parameters),
            headers=headers,
        )
        alone_s = _check_answer(client, target)
        seconds = max(options.seconds, ANSWERS_PER_LEVEL * alone_s)
        levels = options.levels or tuple(default_levels(facts.max_batch_size))
        ramp = run_ramp(
            client,
            target,
            levels,
            seconds=seconds,
            warmup=(min(max(levels), facts.max_batch_size), options.warmup_s),
            generator=generator,
            p99_ms=options.p99_ms,
            progress=progress,
        )
    advice, verdict = advise(ramp, facts)
    return BenchResult(
        facts,
        request,
        generator,
        ramp,
        advice,
        verdict,
        _method(options, facts, request, generator, levels, seconds=seconds, alone_s=alone_s),
        tuple(_warnings(ramp, generator)),
    )


def write_recommendation(result: BenchResult, path: Path) -> None:
    """Write the recommended serve settings into the bake.toml at `path` (`--write`)."""
    if result.advice is None:
        raise BenchFailed("there is no recommendation to write", result.verdict)
    write_advice(path, result.advice, write_comment(result.ramp.budget))


def _generator(client: str) -> Generator:
    if client == "wrk" and not wrk_available():
        raise ConfigError(
            "wrk is not installed", "install it (Debian: apt-get install wrk), or pass --client httpx"
        )
    if client == "auto":
        return "wrk" if wrk_available() else "httpx"
    return "wrk" if client == "wrk" else "httpx"


def _check_answer(client: httpx.Client, target: Target) -> float:
    """One request first, alone: a server that refuses the input would only produce a table of errors.
    Returns how long it took, in seconds."""
    started = time.perf_counter()
    try:
        response = client.post(target.url, content=target.body, headers=dict(target.headers), timeout=600)
    except httpx.HTTPError as error:
        raise BenchFailed(
            f"the first request failed ({type(error).__name__}: {error})", "check the server's logs"
        ) from None
    if not response.is_success:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise BenchFailed(
            f"the server answered {response.status_code} to the first request: {message}",
            "check --input / --prompt / --param",
        )
    return time.perf_counter() - started


def _method(
    options: BenchOptions,
    facts: ServerFacts,
    request: str,
    generator: Generator,
    levels: tuple[int, ...],
    *,
    seconds: float,
    alone_s: float,
) -> str:
    tool = "wrk (one thread)" if generator == "wrk" else "an in-process asyncio httpx client"
    host = urlsplit(facts.url).hostname or ""
    shared = (
        " The server runs on this machine, so the client's CPU use competes with it."
        if host in LOOPBACK_HOSTS
        else ""
    )
    lengthened = (
        f" (not {options.seconds:g} s: one request alone took {alone_s:.1f} s, and a level needs "
        f"{ANSWERS_PER_LEVEL} of those at least)"
        if seconds > options.seconds
        else ""
    )
    return (
        f"Closed loop with {tool}: at each concurrency level ({', '.join(map(str, levels))}, "
        "stopping after two levels in a row past the budget, then bisecting), that many connections "
        f"each POST {request} again as soon as the answer arrives, for {seconds:.3g} s{lengthened}, after a "
        f"{options.warmup_s:g} s warm-up. Latency is the client's (request sent to answer read); batch "
        "sizes, queue wait and device time are the server's own, from its /metrics histograms read before "
        f"and after each level.{shared}"
    )


def _warnings(ramp: Ramp, generator: Generator) -> list[str]:
    warnings = []
    for level in ramp.levels:
        limits = level.client_limits()
        if limits:
            warnings.append(
                f"concurrency {level.concurrency}: {' and '.join(limits)}: the client may have been "
                "the bottleneck, the server may do better than measured"
            )
    if warnings and generator == "httpx" and not wrk_available():
        warnings.append("install wrk (Debian: apt-get install wrk): it needs far less CPU per request")
    return warnings
