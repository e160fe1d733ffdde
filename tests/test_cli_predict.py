"""`bake predict --url` against real servers (`python -m serve` with tiny models): a prompt's denoising
steps as a progress bar on a real pseudo-terminal (gone once the image is written), nothing of it when
piped, `--json` for scripts, and the server's errors as one line with the fix for their status.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures import images
from tests.fixtures.docker import run_bake
from tests.fixtures.models import make_image_classifier, make_text_to_image_pipeline
from tests.fixtures.servers import ServerProcess
from tests.fixtures.terminal import run_in_terminal

pytestmark = pytest.mark.slow

API_KEY = "cli-test-key"
STEPS = 12
SIDE = 64
"""12 steps of the tiny pipeline at 64 x 64 take a few seconds on this machine's shared CPUs: long enough
for the progress bar (shown for waits longer than a second) to be drawn at several steps."""


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("predict-t2i")
    model = make_text_to_image_pipeline(root / "tiny-sd")
    env = {"BAKE_MODEL": str(model), "BAKE_MAX_IMAGE_AREA": str(SIDE * SIDE)}
    with ServerProcess(env, root / "server.log") as server:
        yield server.url


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("predict-classifier")
    model = make_image_classifier(root / "tiny-resnet", "resnet", image_size=64, num_labels=5)
    with ServerProcess({"BAKE_MODEL": str(model), "BAKE_API_KEY": API_KEY}, root / "server.log") as server:
        yield server.url


def prompt_args(url: str, output: Path) -> list[str]:
    parameters = [f"num_inference_steps={STEPS}", f"width={SIDE}", f"height={SIDE}", "seed=7"]
    return ["predict", "--url", url, "a red fox", *(f"-p{p}" for p in parameters), "-o", str(output)]


def test_a_prompt_shows_its_steps_on_a_terminal_then_only_the_result(generator: str, tmp_path: Path) -> None:
    output = tmp_path / "fox.png"
    run = run_in_terminal(prompt_args(generator, output), {}, tmp_path, timeout=300)
    assert run.exit_code == 0, run.text[-3000:]
    drawn = {int(step) for step, total in re.findall(r"generating\W+(\d+)/(\d+) steps", run.plain)}
    assert len(drawn) >= 2 and drawn <= set(range(1, STEPS + 1)), f"the bar moved with the steps: {drawn}"
    assert f"/{STEPS} steps" in run.plain
    screen = run.screen()
    assert screen == [f"wrote {output} ({output.stat().st_size} bytes, seed 7, {screen[0].split(', ')[-1]}"]
    assert Image.open(output).size == (SIDE, SIDE)


def test_piped_a_prompt_prints_the_result_and_json_says_it_for_scripts(
    generator: str, tmp_path: Path
) -> None:
    output = tmp_path / "fox.png"
    args = [*prompt_args(generator, output), "--json"]
    args[args.index(f"-pnum_inference_steps={STEPS}")] = "-pnum_inference_steps=2"
    result = run_bake(args, {}, tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    document = json.loads(result.stdout)
    assert document["url"] == generator and document["task"] == "text-to-image" and document["seconds"] > 0
    [image] = document["output"]
    assert image == {
        "path": str(output),
        "bytes": output.stat().st_size,
        "media_type": "image/png",
        "seed": 7,
    }
    assert Image.open(io.BytesIO(output.read_bytes())).format == "PNG"


def test_a_refused_prompt_is_one_line_with_the_fix(generator: str, tmp_path: Path) -> None:
    result = run_bake(
        ["predict", "--url", generator, "a fox", "-p", "num_inference_steps=100000"], {}, tmp_path
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bake: error: the server answered 422: ") and "num_inference_steps" in line
    assert line.endswith(": check the input and its parameters (-p KEY=VALUE)")


def test_an_image_gets_its_labels_as_a_table_or_json(classifier: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(images.photo(160, 120))
    args = ["predict", "--url", classifier, str(photo), "-p", "top_k=3"]
    table = run_bake(args, {"BAKE_API_KEY": API_KEY}, tmp_path)
    assert table.returncode == 0, table.stderr
    rows = [line.split("  ", 1) for line in table.stdout.splitlines()]
    assert len(rows) == 3 and all(0 <= float(score) <= 1 for score, _ in rows)
    as_json = run_bake([*args, "--json"], {"BAKE_API_KEY": API_KEY}, tmp_path)
    document = json.loads(as_json.stdout)
    assert document["task"] == "image-classification" and len(document["output"]) == 3
    assert [f"{item['score']:.4f}" for item in document["output"]] == [score for score, _ in rows]
    assert [item["label"] for item in document["output"]] == [label for _, label in rows]


@pytest.mark.parametrize(
    ("make_input", "env", "exit_code", "expected"),
    [
        (lambda d: d / "missing.jpg", {"BAKE_API_KEY": API_KEY}, 2, "missing.jpg is not a file: "),
        (lambda d: d, {}, 1, "the server answered 401: "),
    ],
    ids=["missing-file", "no-api-key"],
)
def test_image_input_errors(
    classifier: str, tmp_path: Path, make_input, env: dict[str, str], exit_code: int, expected: str
) -> None:
    value = make_input(tmp_path)
    result = run_bake(["predict", "--url", classifier, str(value)], env, tmp_path)
    assert result.returncode == exit_code, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert expected in line
    if exit_code == 1:
        assert line.endswith(": set BAKE_API_KEY to one of the server's API keys")


def test_a_file_that_is_not_an_image_gets_the_servers_word(classifier: str, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    result = run_bake(["predict", "--url", classifier, str(text)], {"BAKE_API_KEY": API_KEY}, tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("bake: error: the server answered 415: ")
    assert line.endswith(": send an image file (JPEG, PNG, WebP, ...)")
