"""How `bake bench` shows what it measured: progress while it runs, then a table, a terminal plot (on a
TTY), a PNG plot, and the recommendation in words.

The PNG is drawn by matplotlib (Agg backend, imported only here): a readable chart needs axes, ticks and
a legend, which a hand-written PNG encoder would have to rasterise with a font of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bake.bench import BenchResult
from bake.bench.loadgen import Tick
from bake.bench.ramp import Budget, Level, within

_BLOCKS = " ▏▎▍▌▋▊▉█"
_BAR_WIDTH = 28


def level_line(level: Level, budget: Budget, *, colour: bool) -> str:
    """One finished level in a line (rich markup with `colour`)."""
    if level.load.requests == 0:
        return f"concurrency {level.concurrency:>3}: no answer within the level, {level.load.failures} failed"
    met = within(level, budget)
    mark = ("within" if met else "past") if not colour else ("[green]within[/]" if met else "[red]past[/]")
    return (
        f"concurrency {level.concurrency:>3}: {level.load.throughput:8.1f} req/s, "
        f"p99 {level.load.p99_ms:7.1f} ms ({mark} the budget), {level.load.failures} failed"
    )


class LineProgress:
    """Progress as one line per finished level (for logs and pipes)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def level_started(self, concurrency: int, seconds: float) -> Tick:
        """Nothing to show until the level ends."""
        return lambda elapsed, answered: None

    def level_done(self, level: Level, budget: Budget) -> None:
        """One line: the level's throughput and p99."""
        self.stream.write(f"bench: {level_line(level, budget, colour=False)}\n")
        self.stream.flush()


class LiveProgress:
    """A progress bar per level on a terminal (rich), and the level's line once it ends."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[answered]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: int | None = None

    def start(self) -> None:
        """Show the bars."""
        self.progress.start()

    def stop(self) -> None:
        """Remove the bars (the level lines stay)."""
        self.progress.stop()

    def level_started(self, concurrency: int, seconds: float) -> Tick:
        """A bar for the level, advanced by the load generator's ticks."""
        if self._task is not None:
            self.progress.remove_task(self._task)
        task = self.progress.add_task(f"concurrency {concurrency:>3}", total=seconds, answered="")
        self._task = task

        def tick(elapsed: float, answered: int | None) -> None:
            shown = f"{answered} answered" if answered is not None else ""
            self.progress.update(task, completed=min(elapsed, seconds), answered=shown)

        return tick

    def level_done(self, level: Level, budget: Budget) -> None:
        """The level's line above the bars."""
        self.progress.console.print(level_line(level, budget, colour=True), highlight=False)


def table(result: BenchResult) -> str:
    """The levels as an aligned text table."""
    header = (
        "conc",
        "req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "batch mean/p95/max",
        "queue wait ms",
        "device ms",
        "budget",
    )
    rows = [header]
    for level in result.ramp.levels:
        load, server = level.load, level.server
        batch = (
            f"{server.batch_mean:.1f}/{server.batch_p95}/{server.batch_max}"
            if server and server.batch_mean is not None
            else "-"
        )
        wait = (
            f"{server.queue_wait_ms_mean:.1f} (p95 {server.queue_wait_ms_p95:.1f})"
            if server and server.queue_wait_ms_mean is not None and server.queue_wait_ms_p95 is not None
            else "-"
        )
        device = f"{server.device_ms_mean:.1f}" if server and server.device_ms_mean is not None else "-"
        mark = "ok" if within(level, result.ramp.budget) else "past"
        if level.client_limits():
            mark += " (client-bound)"
        rows.append(
            (
                str(level.concurrency),
                f"{load.throughput:.1f}",
                f"{load.p50_ms:.1f}",
                f"{load.p95_ms:.1f}",
                f"{load.p99_ms:.1f}",
                str(load.failures),
                batch,
                wait,
                device,
                mark,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i < 9 else cell for i, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    )


def heading(result: BenchResult) -> str:
    """What was measured: the server, its settings, the budget, where the ramp stopped."""
    facts = result.facts
    lines = [
        (
            f"bench {facts.url}: {facts.model} ({facts.task} on {facts.device}; max_batch_size "
            f"{facts.max_batch_size}, max_wait_ms {facts.max_wait_ms:g}, max_queue {facts.max_queue})"
        ),
        f"budget    p99 <= {result.ramp.budget.p99_ms:.0f} ms ({result.ramp.budget.origin})",
    ]
    if result.ramp.stopped:
        lines.append(f"stopped   {result.ramp.stopped}")
    return "\n".join(lines)


def conclusion(result: BenchResult) -> str:
    """The recommendation and why, how it was measured, and the warnings."""
    advice = result.advice
    lines = []
    if advice is None:
        lines.append(f"no recommendation: {result.verdict}")
    else:
        lines += [
            f"recommended for this machine: {result.verdict}",
            (
                f"  [serve]  max_batch_size = {advice.max_batch_size}, max_wait_ms = {advice.max_wait_ms:g}, "
                f"max_queue = {advice.max_queue}"
            ),
            (
                f"  fly.toml [http_service.concurrency]  soft_limit = {advice.soft_limit}, "
                f"hard_limit = {advice.hard_limit}"
            ),
            (
                f"  Knative  autoscaling.knative.dev/target = {advice.soft_limit}, containerConcurrency = "
                f"{advice.hard_limit}"
            ),
            "  why:",
            *(f"    - {reason}" for reason in advice.reasons),
            *(f"  note: {note}" for note in advice.notes),
        ]
    lines += ["", f"how: {result.method}"]
    lines += [f"warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)


def terminal_plot(result: BenchResult) -> str:
    """Throughput and p99 per level as horizontal bars (p99 bars past the budget in red markup)."""
    levels = result.ramp.levels
    best = max(level.load.throughput for level in levels) or 1.0
    slowest = max(max(level.load.p99_ms for level in levels), result.ramp.budget.p99_ms) or 1.0
    budget_ms = result.ramp.budget.p99_ms
    lines = [f"{'conc':>5}  {'throughput (req/s)':<{_BAR_WIDTH + 9}}  p99 (ms; | = budget {budget_ms:.0f})"]
    budget_at = round(_BAR_WIDTH * result.ramp.budget.p99_ms / slowest)
    for level in levels:
        throughput = _bar(level.load.throughput / best)
        p99 = _bar(level.load.p99_ms / slowest).ljust(_BAR_WIDTH)
        p99 = p99[:budget_at] + "|" + p99[budget_at + 1 :] if budget_at < _BAR_WIDTH else p99 + "|"
        colour = "green" if within(level, result.ramp.budget) else "red"
        lines.append(
            f"{level.concurrency:>5}  [cyan]{throughput}[/] {level.load.throughput:8.1f}  "
            f"[{colour}]{p99}[/] {level.load.p99_ms:.1f}"
        )
    return "\n".join(lines)


def _bar(fraction: float) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * _BAR_WIDTH * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_BLOCKS[part] if part else "")).ljust(_BAR_WIDTH)


def save_plot(result: BenchResult, path: Path) -> Path:
    """Throughput and p99 against concurrency as a PNG at `path` (parent folders created)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    levels = result.ramp.levels
    concurrency = [level.concurrency for level in levels]
    figure, throughput_axis = pyplot.subplots(figsize=(8, 4.5), dpi=120)
    latency_axis = throughput_axis.twinx()
    throughput_axis.plot(
        concurrency, [level.load.throughput for level in levels], "o-", color="tab:blue", label="throughput"
    )
    latency_axis.plot(
        concurrency, [level.load.p99_ms for level in levels], "s-", color="tab:red", label="p99"
    )
    latency_axis.plot(
        concurrency, [level.load.p50_ms for level in levels], ":", color="tab:red", alpha=0.6, label="p50"
    )
    latency_axis.axhline(
        result.ramp.budget.p99_ms,
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label=f"budget {result.ramp.budget.p99_ms:.0f} ms",
    )
    if result.advice is not None:
        for value, name, style in (
            (result.advice.knee_concurrency, "knee", ":"),
            (result.advice.limit_concurrency, "limit", "-."),
        ):
            throughput_axis.axvline(
                value, color="grey", linestyle=style, linewidth=1, label=f"{name} ({value})"
            )
    throughput_axis.set_xscale("log", base=2)
    throughput_axis.set_xticks(concurrency, [str(value) for value in concurrency])
    throughput_axis.set_xlabel("concurrent requests")
    throughput_axis.set_ylabel("throughput (req/s)", color="tab:blue")
    latency_axis.set_ylabel("latency (ms)", color="tab:red")
    throughput_axis.set_ylim(bottom=0)
    latency_axis.set_ylim(bottom=0)
    facts = result.facts
    throughput_axis.set_title(
        f"bake bench: {Path(facts.model).name} ({facts.task}, {facts.device}, "
        f"max_batch_size {facts.max_batch_size})",
        fontsize=10,
    )
    handles = throughput_axis.get_legend_handles_labels()[0] + latency_axis.get_legend_handles_labels()[0]
    throughput_axis.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(handles), fontsize=8
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    pyplot.close(figure)
    return path
