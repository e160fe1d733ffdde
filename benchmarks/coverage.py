"""Which image classifiers bake serves, how, and how fast they start: one row per model type (issue 10).

    python -m benchmarks.coverage [--types vit swin ...] [--repeats 2] [--full-size efficientnet donut-swin]
                                  [--before-tree DIR] [--out benchmarks/results/coverage.json]
                                  [--docs docs/models.md] [--render benchmarks/results/coverage.json]

For every model type of serve/contract/models.py (transformers' image-classification mapping), the tiny
random-weight model of tests/fixtures/classifier_zoo.py is measured three ways:
- parity, in process (tests/fixtures/classifier_parity.py, the harness tests/test_classifier_zoo.py asserts
  on): the largest score difference to `pipeline("image-classification")` over every label of four photos
  (landscape, portrait, EXIF-rotated, tiny), and the largest difference of a photo's scores batched vs alone;
- start-up: `python -m serve` from process start to /ready 200, against the type's own floor, a fresh
  process that imports transformers, loads the model and its processor and runs one forward pass on a photo
  (both include the interpreter and imports; each is run `--repeats` times, interleaved, and the fastest
  run counts: on a shared machine one slow run says more about the neighbours than about the model);
- how it runs: the runtime's preprocessing, inputs, and traced or eager forward pass (with the reason).
Refused types and the types whose packages this machine cannot install get their registry reason.
`--full-size` adds start-up rows for default-size random-weight models of the given types (their own default
processor), the slow cases of the issue; `--before-tree` also starts them with the runtime of another
source tree (e.g. `git archive` of an older commit) for a before/after figure.

Writes the JSON report and renders docs/models.md from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import machine, write_report
from serve.contract.models import IMAGE_CLASSIFIERS, TRANSFORMERS_VERSION
from serve.errors import ModelLoadError
from tests.fixtures import images
from tests.fixtures.classifier_parity import BATCH_TOLERANCE, SCORE_TOLERANCE, measure
from tests.fixtures.classifier_zoo import CONFIG_ONLY, REPO_SHAPES, ZOO, make_classifier
from tests.fixtures.servers import REPO_ROOT, ServerProcess

FLOOR_SCRIPT = """
import sys
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
processor = AutoImageProcessor.from_pretrained(sys.argv[1])
with torch.inference_mode():
    model(**processor(images=Image.open(sys.argv[2]).convert("RGB"), return_tensors="pt"))
"""
"""The type's own load and one forward pass, as a transformers user runs them."""


def floor_seconds(folder: Path, photo: Path) -> float:
    """Seconds from process start to the end of `FLOOR_SCRIPT`."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT, str(folder), str(photo)],
        check=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=1800,
    )
    return time.perf_counter() - started


def startup_seconds(folder: Path, log: Path, source_tree: Path = REPO_ROOT) -> tuple[float, dict[str, Any]]:
    """Seconds from `python -m serve` start to /ready 200 (runtime code from `source_tree`), and /info."""
    import httpx

    env = {"BAKE_MODEL": str(folder), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(source_tree)}
    server = ServerProcess(env, log, source_tree=source_tree)
    started = time.perf_counter()
    server.start(timeout=1800)
    try:
        seconds = time.perf_counter() - started
        info = httpx.get(server.url + "/info", timeout=30).json()
    finally:
        server.stop()
    return seconds, info


def make_full_size(model_type: str, folder: Path) -> Path:
    """A default-size random-weight model of `model_type` (seeded) with its type's default PIL processor."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    config = AutoConfig.for_model(model_type, num_labels=11)
    config.architectures = [ZOO[model_type].architecture]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, config.architectures[0])(config).eval()
    model.save_pretrained(folder)
    getattr(transformers, IMAGE_PROCESSOR_MAPPING_NAMES[model_type]["pil"])().save_pretrained(folder)
    return folder


def zoo_row(model_type: str, work: Path, photo: Path, repeats: int) -> dict[str, Any]:
    """Parity, start-up and forward pass of the tiny model of `model_type`."""
    kind = IMAGE_CLASSIFIERS[model_type]
    entry = ZOO[model_type]
    folder = make_classifier(model_type, work / model_type)
    row: dict[str, Any] = {
        "model_type": model_type,
        "architecture": entry.architecture,
        "repo": entry.hub_repo,
    }
    row["notes"] = "; ".join(note for note in (kind.notes, entry.notes) if note)
    try:
        parity = measure(folder)
    except ModelLoadError as error:  # a type that does not load here: its reason goes in the table
        row.update(status="not verified here", error=f"{type(error).__name__}: {error}")
        return row
    floors, startups = [], []
    for _ in range(repeats):
        floors.append(floor_seconds(folder, photo))
        startups.append(startup_seconds(folder, work / f"{model_type}.log")[0])
    floor, startup = min(floors), min(startups)
    row.update(
        status="serves" if parity.serves_with_parity else "differs",
        processor=parity.processor,
        preprocessing=parity.preprocessing,
        inputs=list(parity.inputs),
        traced=parity.traced,
        eager_reason=parity.eager_reason,
        score_difference=parity.score_difference,
        batch_difference=parity.batch_difference,
        startup_s=startup,
        floor_s=floor,
    )
    return row


def full_size_row(model_type: str, work: Path, photo: Path, before_tree: Path | None) -> dict[str, Any]:
    """Start-up of a default-size random-weight model of `model_type` (and with the `before_tree` runtime)."""
    folder = make_full_size(model_type, work / f"{model_type}-full")
    floor = floor_seconds(folder, photo)
    startup, info = startup_seconds(folder, work / f"{model_type}-full.log")
    details = info["task_details"]
    row = {
        "model_type": model_type,
        "startup_s": startup,
        "floor_s": floor,
        "traced": details["torchscript"],
        "eager_reason": details.get("eager_reason"),
        "cpu_threads": info["cpu_threads"],
    }
    if before_tree is not None:
        row["before_startup_s"], _ = startup_seconds(folder, work / f"{model_type}-before.log", before_tree)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--types", nargs="*", default=sorted(ZOO), help="zoo model types to measure")
    parser.add_argument(
        "--repeats", type=int, default=2, help="start-up runs per tiny model (fastest counts)"
    )
    parser.add_argument("--full-size", nargs="*", default=[], help="types to start at their default size too")
    parser.add_argument("--before-tree", type=Path, help="source tree of an older runtime, for --full-size")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/coverage.json"))
    parser.add_argument("--docs", type=Path, default=Path("docs/models.md"))
    parser.add_argument("--render", type=Path, help="only render --docs from this earlier JSON report")
    args = parser.parse_args()
    if args.render is not None:
        args.docs.write_text(render(json.loads(args.render.read_text())))
        return
    report: dict[str, Any] = {
        "machine": machine(),
        "transformers": TRANSFORMERS_VERSION,
        "repeats": args.repeats,
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bake-coverage-") as scratch:
        work = Path(scratch)
        photo = work / "photo.jpg"
        photo.write_bytes(images.photo(640, 480))
        report["types"] = []
        for model_type in args.types:
            row = zoo_row(model_type, work, photo, args.repeats)
            report["types"].append(row)
            print(_progress(row), flush=True)
        report["refused"] = [
            {
                "model_type": name,
                "architecture": kind.architectures[0],
                "reason": kind.refusal,
                "fix": kind.fix,
            }
            for name, kind in sorted(IMAGE_CLASSIFIERS.items())
            if kind.refusal
        ]
        report["types"] += [
            {
                "model_type": name,
                "architecture": IMAGE_CLASSIFIERS[name].architectures[0],
                "status": "not verified here",
                "notes": IMAGE_CLASSIFIERS[name].notes,
            }
            for name in sorted(CONFIG_ONLY)
            if not IMAGE_CLASSIFIERS[name].refusal
        ]
        report["repo_shapes"] = []
        for shape in REPO_SHAPES:
            parity = measure(shape.make(work / f"shape-{shape.name}"))
            report["repo_shapes"].append(
                {
                    "shape": shape.name,
                    "notes": shape.notes,
                    "score_difference": parity.score_difference,
                    "batch_difference": parity.batch_difference,
                }
            )
        report["full_size"] = [full_size_row(name, work, photo, args.before_tree) for name in args.full_size]
    report["load_after"] = os.getloadavg()
    write_report(report, args.out)
    args.docs.write_text(render(report))
    print(f"wrote {args.docs}")


def _progress(row: dict[str, Any]) -> str:
    if "startup_s" not in row:
        return f"{row['model_type']:24} {row['status']}: {row.get('error', '')[:100]}"
    forward = "traced" if row["traced"] else "eager"
    return (
        f"{row['model_type']:24} {row['status']:8} {forward:6} parity {row['score_difference']:.1e} "
        f"batch {row['batch_difference']:.1e} start-up {row['startup_s']:.1f} s, floor {row['floor_s']:.1f} s"
    )


def render(report: dict[str, Any]) -> str:
    """docs/models.md from a coverage report."""
    rows = report["types"]
    serving = [row["model_type"] for row in rows if row["status"] == "serves"]
    differing = [row["model_type"] for row in rows if row["status"] == "differs"]
    unverified = [row["model_type"] for row in rows if row["status"] == "not verified here"]
    refused = report["refused"]
    total = len(IMAGE_CLASSIFIERS)
    host = report["machine"]
    measured_on = (
        f"Generated by `python -m benchmarks.coverage` (do not edit by hand) on {host['date'][:10]}: "
        f"{host['cpu']} ({host['cores']} cores), Python {host['python']}, torch {host['torch']}, "
        f"transformers {report['transformers']}, load average {report['load_before'][0]:.1f} before and "
        f"{report['load_after'][0]:.1f} after. Every model type of transformers' image-classification "
        "mapping has a tiny random-weight model in tests/fixtures/classifier_zoo.py, with its real repo's "
        "processor config; serve/contract/models.py is the registry `bake build` and the runtime consult."
    )
    summary = (
        f"**{len(serving) + len(unverified)} of {total} model types serve** "
        f"({(len(serving) + len(unverified)) / total:.0%}): {len(serving)} measured here with parity; "
        f"{len(unverified)} ({', '.join(unverified) or 'none'}) need packages that `bake build` installs in "
        "the image but that do not load on this machine's CPU torch (PyPI's torchvision wheels need CUDA "
        f"torch), so they are not verified here. {len(refused)} are refused by `bake build`, with the reason "
        f"below. Outside the parity targets: {', '.join(differing) or 'none'}."
    )
    lines = [
        "# Models bake serves: image classification",
        "",
        measured_on,
        "",
        summary,
        "",
        LEGEND.format(score=SCORE_TOLERANCE, batch=BATCH_TOLERANCE, runs=_runs(report["repeats"])),
        "",
        _cells(
            "Model type",
            "Architecture",
            "Processor",
            "Preprocessing",
            "Forward",
            "Parity",
            "Batch",
            "Start-up (floor)",
            "Notes",
        ),
        _cells(*["---"] * 9),
    ]
    lines += [_type_line(row) for row in rows]
    lines += ["", "## Refused at `bake build`", "", _cells("Model type", "Architecture", "Why", "What to do")]
    lines += [_cells(*["---"] * 4)]
    lines += [
        _cells(item["model_type"], item["architecture"], item["reason"], item["fix"]) for item in refused
    ]
    lines += ["", "## Repository layouts", "", "The tiny ViT saved the ways Hub repos are.", ""]
    lines += [_cells("Layout", "Parity", "Batch"), _cells(*["---"] * 3)]
    lines += [
        _cells(item["notes"], f"{item['score_difference']:.1e}", f"{item['batch_difference']:.1e}")
        for item in report["repo_shapes"]
    ]
    if report["full_size"]:
        lines += ["", "## Start-up of default-size models", "", FULL_SIZE, ""]
        lines += [_cells("Model type", "Start-up", "Floor", "Ratio", "Forward", "Before this change")]
        lines += [_cells(*["---"] * 6)] + [_full_size_line(item) for item in report["full_size"]]
    return "\n".join(lines) + "\n"


LEGEND = """\
- Parity: the largest |served - `pipeline("image-classification")`| score over every label of four photos
  (landscape JPEG, portrait PNG, EXIF-rotated JPEG, 40x30 WebP); target {score:g}.
- Batch: the largest |batched - alone| score of the same photos, batched in the largest bucket; target
  {batch:g}.
- Start-up: `python -m serve` from process start to /ready, against the floor: a fresh process that imports
  transformers, loads the model and its processor, and classifies one photo ({runs}). Target: within 2x.
- Forward: traced (TorchScript, checked against eager at every batch size) or eager, decided at warm-up; the
  reason for eager is in /info (`task_details.eager_reason`)."""

FULL_SIZE = """\
Random-weight models at the default size of their config and processor (the cases that took minutes to become
ready). A forward pass whose tracing would not fit the warm-up budget is served eagerly, warmed up only where
it fits, and the CPU thread count is decided from one sample when that sample is slow enough."""


def _runs(repeats: int) -> str:
    return "one run each" if repeats == 1 else f"the fastest of {repeats} runs each, interleaved"


def _cells(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _forward(item: dict[str, Any]) -> str:
    return "traced" if item["traced"] else f"eager: {item['eager_reason']}"


def _type_line(row: dict[str, Any]) -> str:
    """One model type's row of the table."""
    if "startup_s" not in row:
        needs = ", ".join(package.name for package in IMAGE_CLASSIFIERS[row["model_type"]].packages)
        notes = f"needs {needs}, installed by `bake build`; {row['notes']}"
        unmeasured = ("–",) * 3
        return _cells(
            row["model_type"], row["architecture"], *unmeasured, "not verified here", "–", "–", notes
        )
    inputs = "" if row["inputs"] == ["pixel_values"] else f" (inputs: {', '.join(row['inputs'])})"
    startup = f"{row['startup_s']:.1f} s ({row['floor_s']:.1f} s, {row['startup_s'] / row['floor_s']:.2f}x)"
    return _cells(
        row["model_type"],
        row["architecture"],
        row["processor"],
        row["preprocessing"] + inputs,
        _forward(row),
        f"{row['score_difference']:.1e}",
        f"{row['batch_difference']:.1e}",
        startup,
        row["notes"],
    )


def _full_size_line(item: dict[str, Any]) -> str:
    before = f"{item['before_startup_s']:.1f} s" if "before_startup_s" in item else "–"
    ratio = f"{item['startup_s'] / item['floor_s']:.2f}x"
    return _cells(
        item["model_type"],
        f"{item['startup_s']:.1f} s",
        f"{item['floor_s']:.1f} s",
        ratio,
        _forward(item),
        before,
    )


if __name__ == "__main__":
    main()
