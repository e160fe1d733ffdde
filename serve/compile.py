"""`python -m serve.compile`: the compile stage of `bake build` (image classification on the CPU).

It loads the baked model eagerly with transformers, traces its logits forward pass with TorchScript
(`serve.tracing`), saves the trace without the tensors the model's safetensors files hold, loads it back as
the runtime does (those tensors attached from the files, then frozen and rewritten each way of
`serve.contract.compiled.Rewrite`) and checks its scores (softmax and sigmoid of the logits) against the
eager model's on photo-like images at every batch bucket the server will run, and against its own scores
alone. Of the ways within `TOLERANCE` and `BATCH_TOLERANCE` everywhere, the one that runs the largest batch
fastest is kept, with a manifest (`serve.contract.compiled.Manifest`) that holds everything
the runtime needs to serve it without transformers: where its left-out tensors are, the preprocessing
resolved from the model's image processor, the labels, the torch version and device it was made for, the
buckets and the parity figure. Otherwise, or if anything at all fails, the image serves today's path
(transformers at start) and the report says why: compiling never fails a build.

    python -m serve.compile --model-dir DIR --model ID --commit SHA --max-batch-size 8 --out OUT
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from serve.contract.batching import bucket_sizes
from serve.contract.compiled import ARCHIVE_FILE, MANIFEST_FILE, TORCHSCRIPT, Manifest, Report, Rewrite
from serve.contract.errors import UnsupportedModel
from serve.contract.models import image_classifier
from serve.device import Placement
from serve.tracing import (
    Inputs,
    TensorSources,
    TracedForward,
    detach_weights,
    eager_forward,
    last_line,
    load_frozen,
    traced_forward,
)
from serve.transforms import FastImageTransform, build_image_transform

logger = logging.getLogger("serve")

TOLERANCE = 1e-4
"""The largest difference in scores (and, relative and absolute, in logits) an archive may have."""
BATCH_TOLERANCE = 1e-5
"""The largest difference between a row's scores in a batch of any bucket size and alone: a request's answer
must not depend on its batch-mates (a rewrite that compiles other kernels per batch size may not keep it)."""
TASK = "image-classification"
PHOTO_SIZES = ((640, 480), (480, 640), (300, 300))
"""(width, height) of the photo-like images the archive is checked on: landscape, portrait, square."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class NotCompilable(Exception):
    """The model is served on the eager path; the message says why."""


def compile_classifier(
    model_dir: Path, *, model: str, commit_sha: str | None, buckets: Sequence[int], out: Path
) -> Report:
    """Compile the image classifier in `model_dir` into `out` (archive, then manifest) and return the report.

    Raises `NotCompilable` when the model cannot be served compiled (nothing is left in `out` then).
    """
    from transformers import AutoModelForImageClassification

    started = time.monotonic()
    try:
        kind = image_classifier(json.loads((model_dir / "config.json").read_text()))
    except (OSError, ValueError, UnsupportedModel) as error:
        raise NotCompilable(f"not a model type bake serves: {error}") from error
    if not kind.traceable:
        raise NotCompilable(f"{kind.name} models cannot be traced: {kind.notes}")
    placement = Placement(torch.device("cpu"), torch.float32)
    try:
        eager = AutoModelForImageClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as error:
        raise NotCompilable(f"transformers cannot load the model: {error}") from error
    accepted = inspect.signature(eager.forward).parameters
    transform = build_image_transform(model_dir, placement, accepts=accepted.__contains__)
    if not isinstance(transform, FastImageTransform):
        raise NotCompilable("the image processor is not on the fast path (its own code preprocesses)")
    if transform.output_size is None:
        raise NotCompilable("the model's input size depends on the image (no fixed crop or resize)")
    photos = [photo(width, height, seed) for seed, (width, height) in enumerate(PHOTO_SIZES)]
    rows = transform.collate([transform.prepare(image) for image in photos], len(photos))
    with _warnings_of(logger) as warnings:
        traced = traced_forward(eager, rows, buckets, rtol=TOLERANCE, atol=TOLERANCE)
    if traced is None:
        raise NotCompilable(warnings[-1] if warnings else "the traced forward differs from the eager one")
    assert traced.trace is not None  # just traced
    tensors = detach_weights(traced.trace, model_dir)
    archive = out / ARCHIVE_FILE
    torch.jit.save(traced.trace, str(archive))
    rewrite, parity = fastest_within_tolerance(
        eager, archive, tensors, model_dir, traced.names, rows, buckets
    )
    config = eager.config
    Manifest(
        model=model,
        commit_sha=commit_sha,
        weights=weight_sizes(model_dir),
        task=TASK,
        torch=torch.__version__,
        device=placement.device.type,
        dtype=placement.dtype_name,
        buckets=tuple(buckets),
        parity=parity,
        labels=tuple(str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)),
        problem_type=config.problem_type,
        preprocessing=transform.preprocessing,
        tensors=tensors,
        rewrite=rewrite,
    ).write(out)
    return Report(path=TORCHSCRIPT, parity=parity, seconds=round(time.monotonic() - started, 2))


def fastest_within_tolerance(
    eager: torch.nn.Module,
    archive: Path,
    tensors: TensorSources,
    model_dir: Path,
    names: tuple[str, ...],
    rows: Inputs,
    buckets: Sequence[int],
) -> tuple[Rewrite, float]:
    """The way to rewrite the frozen archive (`serve.tracing.load_frozen`) that serves fastest, and its score
    difference: each way is loaded as the runtime loads it and checked at every bucket against the eager
    model (`TOLERANCE`), then those within it are timed in turns at the largest bucket; the fastest that also
    gives each row the scores it gets alone (`BATCH_TOLERANCE`) wins. Raises `NotCompilable` when none is
    within both."""
    within: list[tuple[Rewrite, TracedForward, float]] = []
    worst = 0.0
    with torch.inference_mode():
        expected = eager_forward(eager)(rows)
    for rewrite in Rewrite:
        module = load_frozen(archive, tensors, model_dir, torch.device("cpu"), rewrite=rewrite)
        loaded = TracedForward(module, names, fused=rewrite is Rewrite.ONEDNN_FUSION)
        try:
            parity = score_difference(expected, loaded, rows, buckets)  # also its warm-up at every bucket
        except RuntimeError as error:  # oneDNN fusion fails on some graphs (ConvNeXt's): another way serves
            logger.info("the archive does not run rewritten with %s: %s", rewrite, last_line(error))
            continue
        worst = max(worst, parity)
        if parity <= TOLERANCE:
            within.append((rewrite, loaded, parity))
    seconds = batch_seconds([loaded for _, loaded, _ in within], rows, max(buckets))
    timed = sorted(zip(seconds, within, strict=True), key=lambda way: way[0])
    for _, (rewrite, loaded, parity) in timed:
        batched = batch_difference(loaded, rows, buckets)
        if batched <= BATCH_TOLERANCE:
            return rewrite, parity
        logger.info("rewritten with %s, a row's scores depend on its batch (%.1e)", rewrite, batched)
    if timed:
        raise NotCompilable("the archive's scores depend on the batch they are computed in")
    raise NotCompilable(f"the archive's scores differ from the eager model's by {worst:.1e}")


@torch.inference_mode()
def batch_seconds(
    forwards: Sequence[TracedForward], rows: Inputs, size: int, repeats: int = 3
) -> list[float]:
    """The fastest of `repeats` runs of each of `forwards` on a batch of `size` made of `rows`, after one
    untimed run of each (with the check's, the shape's second: a fused shape reaches its full speed from its
    third or fourth). The forwards take turns, one run each per round, so that a slow spell of the machine
    (the build runs other steps next to this one) slows every way alike."""
    count = len(next(iter(rows.values())))
    batch = {name: tensor[torch.arange(size) % count] for name, tensor in rows.items()}
    for forward in forwards:
        forward(batch)
    fastest = [float("inf")] * len(forwards)
    for _ in range(repeats):
        for index, forward in enumerate(forwards):
            started = time.perf_counter()
            forward(batch)
            fastest[index] = min(fastest[index], time.perf_counter() - started)
    return fastest


@torch.inference_mode()
def score_difference(
    expected: torch.Tensor, compiled: TracedForward, rows: Inputs, buckets: Sequence[int]
) -> float:
    """The largest |difference| between the scores (softmax and sigmoid of the logits) `expected` for `rows`
    (the eager model's logits, computed once: its own differences from batch to batch, ~1e-7, are far below
    `TOLERANCE`) and `compiled`'s on batches of every bucket size made of `rows` (row i of a batch is row
    `i % rows` of each)."""
    count = len(expected)
    worst = 0.0
    for size in buckets:
        index = torch.arange(size) % count
        actual = compiled({name: tensor[index] for name, tensor in rows.items()}).float()
        if actual.shape != expected[index].shape:
            return float("inf")
        worst = max(worst, _largest_score_difference(actual, expected[index].float()))
    return worst


@torch.inference_mode()
def batch_difference(compiled: TracedForward, rows: Inputs, buckets: Sequence[int]) -> float:
    """The largest |difference| between a row's scores (softmax and sigmoid) in batches of every bucket size
    made of `rows` and its scores alone (a batch of 1)."""
    count = len(next(iter(rows.values())))
    alone = torch.cat(
        [compiled({name: tensor[i : i + 1] for name, tensor in rows.items()}) for i in range(count)]
    )
    worst = 0.0
    for size in buckets:
        index = torch.arange(size) % count
        batched = compiled({name: tensor[index] for name, tensor in rows.items()}).float()
        worst = max(worst, _largest_score_difference(batched, alone[index].float()))
    return worst


def _largest_score_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest |difference| between the softmax and the sigmoid of two logit tensors (inf if any is not
    a number)."""
    softmax = (actual.softmax(dim=-1) - expected.softmax(dim=-1)).abs().max().item()
    sigmoid = (actual.sigmoid() - expected.sigmoid()).abs().max().item()
    return max(softmax, sigmoid) if np.isfinite(softmax + sigmoid) else float("inf")


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: smooth colour gradients, a few solid shapes with edges, and sensor noise
    (flat grey or pure noise would hide differences a real photo shows)."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        angle, phase = generator.uniform(0, np.pi, 2)
        wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) / generator.uniform(40, 160) + phase)
        channels.append(127 + 90 * wave)
    pixels = np.stack(channels, axis=-1)
    for _ in range(6):
        top, left = generator.integers(0, height - 8), generator.integers(0, width - 8)
        bottom = top + generator.integers(8, height // 3)
        right = left + generator.integers(8, width // 3)
        pixels[top:bottom, left:right] = generator.uniform(0, 255, 3)
    pixels += generator.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def weight_sizes(model_dir: Path) -> dict[str, int]:
    """Weight file (relative to `model_dir`) -> size in bytes."""
    return {
        str(path.relative_to(model_dir)): path.stat().st_size
        for path in sorted(model_dir.rglob("*"))
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file()
    }


@contextmanager
def _warnings_of(target: logging.Logger) -> Iterator[list[str]]:
    """The warning messages `target` logs inside the block (they say why a trace was refused)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    target.addHandler(handler)
    try:
        yield messages
    finally:
        target.removeHandler(handler)


def run(model_dir: Path, *, model: str, commit_sha: str | None, max_batch_size: int, out: Path) -> Report:
    """Compile into `out` and write the report there, whatever happens; return the report."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = compile_classifier(
            model_dir, model=model, commit_sha=commit_sha, buckets=bucket_sizes(max_batch_size), out=out
        )
    except NotCompilable as error:
        report = Report.eager(str(error))
    except Exception as error:  # any library's failure: the image serves today's path, and says why
        logger.exception("compiling failed")
        report = Report.eager(f"compiling failed: {type(error).__name__}: {error}")
    if not report.compiled:
        for name in (MANIFEST_FILE, ARCHIVE_FILE):
            (out / name).unlink(missing_ok=True)
    report.write(out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Compile as the arguments say; print the path taken. Exits 0 whether or not the model compiled."""
    parser = argparse.ArgumentParser(prog="python -m serve.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="The model's files (config.json ...).")
    parser.add_argument("--model", required=True, help="BAKE_MODEL of the image (recorded in the manifest).")
    parser.add_argument("--commit", default="", help="The model's commit sha (empty for a local directory).")
    parser.add_argument("--max-batch-size", type=int, required=True, help="The largest bucket to check.")
    parser.add_argument("--out", type=Path, required=True, help="Where the report, archive and manifest go.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    report = run(
        args.model_dir,
        model=args.model,
        commit_sha=args.commit or None,
        max_batch_size=args.max_batch_size,
        out=args.out,
    )
    if report.compiled:
        print(f"compiled: {TORCHSCRIPT}, max score difference {report.parity:.1e}, {report.seconds:.1f} s")
    else:
        print(f"not compiled, the image serves the eager path: {report.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
