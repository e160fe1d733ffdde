"""`bake bench` against live servers (`python -m serve` on tiny models), run as the real CLI.

The trust test serves the same tiny ResNet twice: at 64 x 64 pixels, and at 512 x 512, where every forward
pass does 64 times the work (a slower model for real, not a mocked server). With the same latency
budget, the slower model must get a lower throughput, a lower concurrency limit and no larger batches.
Every run is also checked for consistency between what the client measured and what the server counted:
a closed loop of c connections can never form a batch of more than c requests, and nothing a level sends
may leak into the next one.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import tomlkit

from bake.bench.advice import advise
from bake.bench.loadgen import LoadResult
from bake.bench.metrics import Histogram, ServerWindow, scrape, window
from bake.bench.ramp import Budget, Level, Ramp, ServerFacts
from bake.config import load_config
from bake.env import read_environment
from bake.init_config import write_config
from bake.state import last_built_tag, last_launch_url, record_build, record_launch
from tests.fixtures import images
from tests.fixtures.docker import run_bake
from tests.fixtures.models import make_image_classifier, make_text_to_image_pipeline
from tests.fixtures.servers import ServerProcess

SERVE_ENV = {
    "BAKE_MAX_BATCH_SIZE": "8",
    "BAKE_MAX_WAIT_MS": "5",
    "BAKE_CPU_THREADS": "1",
    "BAKE_LOG_LEVEL": "warning",
}


def bench(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`bake bench ARGS` in `cwd`."""
    result = run_bake(["bench", *args], env or {}, cwd, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def bench_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """`bake bench --json ARGS` in `cwd`, checked for internal consistency."""
    result = bench(cwd, "--json", *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    check_consistent(report)
    return report


def check_consistent(report: dict) -> None:
    """What the client measured and what the server counted agree, level by level."""
    budget = report["budget"]["p99_ms"]
    max_batch = report["server"]["max_batch_size"]
    for level in report["levels"]:
        concurrency, client, server = level["concurrency"], level["client"], level["server"]
        assert client["connections"] == concurrency
        assert client["failures"] == 0, level
        answered_ok = client["requests"] - client["non2xx"]
        # wrk stops at its deadline without reading the answers in flight: the server may count those more
        assert answered_ok <= server["answers"] <= answered_ok + concurrency, level
        assert server["batch_max"] <= min(concurrency, max_batch), level
        assert server["batch_mean"] <= server["batch_max"]
        assert server["device_ms_mean"] > 0 and server["queue_wait_ms_mean"] >= 0
        assert client["p50_ms"] <= client["p95_ms"] <= client["p99_ms"] <= client["max_ms"]
        assert level["within_budget"] == (client["p99_ms"] <= budget)
    first = report["levels"][0]
    if first["concurrency"] == 1:
        assert first["server"]["batch_mean"] == 1.0
    advice = report["recommendation"]
    if advice is not None:
        limit = next(
            level for level in report["levels"] if level["concurrency"] == advice["limit_concurrency"]
        )
        assert limit["within_budget"] and advice["p99_ms"] <= budget
        assert advice["hard_limit"] == advice["max_batch_size"] + advice["max_queue"]
        assert 1 <= advice["max_batch_size"] <= max_batch
        assert advice["knee_concurrency"] <= advice["limit_concurrency"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-models")
    return {
        "fast": make_image_classifier(root / "fast", "resnet", image_size=64),
        "slow": make_image_classifier(root / "slow", "resnet", image_size=512),
    }


@pytest.fixture(scope="module")
def fast_server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("bench-logs") / "fast.log"
    with ServerProcess({"BAKE_MODEL": str(models["fast"]), **SERVE_ENV}, log) as server:
        yield server


def start_bench(cwd: Path, *args: str, cpu: str | None) -> subprocess.Popen[str]:
    """`bake bench --json ARGS` in `cwd`, started in the background (on CPU `cpu` only, if given)."""
    return subprocess.Popen(
        [*(["taskset", "-c", cpu] if cpu else []), sys.executable, "-m", "bake", "bench", "--json", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_bench(process: subprocess.Popen[str]) -> dict:
    """The report of a `start_bench`, checked for internal consistency."""
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    report = json.loads(stdout)
    check_consistent(report)
    return report


def pin(process: subprocess.Popen[bytes] | None, cpus: str) -> None:
    """Run every thread of `process` on `cpus` (a taskset list)."""
    assert process is not None
    subprocess.run(["taskset", "-a", "-cp", cpus, str(process.pid)], check=True, capture_output=True)


@contextmanager
def a_core_each(servers: tuple[ServerProcess, ServerProcess]) -> Iterator[tuple[str | None, str | None]]:
    """Give each server (and, through the CPUs yielded, its load generator) a CPU of its own, so that the two
    benches see the same load from the rest of the machine but not each other's; all CPUs again after."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        yield None, None
        return
    for server, core in zip(servers, cores):
        pin(server.process, str(core))
    try:
        yield str(cores[0]), str(cores[1])
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                pin(server.process, ",".join(map(str, cores)))


def bench_side_by_side(
    cwds: tuple[Path, Path],
    urls: tuple[str, str],
    cpus: tuple[str | None, str | None],
    *args: str,
    extra: tuple[str, ...] = (),
) -> tuple[dict, dict]:
    """Bench two servers at the same time, so both see the same load from the rest of the machine."""
    first = start_bench(cwds[0], urls[0], *args, *extra, cpu=cpus[0])
    second = start_bench(cwds[1], urls[1], *args, "--no-plot", cpu=cpus[1])
    return finish_bench(first), finish_bench(second)


@pytest.mark.slow
def test_a_slower_model_gets_lower_limits(
    models: dict[str, Path], fast_server: ServerProcess, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_config(project / "bake.toml", {"model.id": str(models["fast"])})
    original = (project / "bake.toml").read_text()
    plot = tmp_path / "fast.png"
    slow_env = {"BAKE_MODEL": str(models["slow"]), **SERVE_ENV}
    with (
        ServerProcess(slow_env, tmp_path / "slow.log") as slow_server,
        a_core_each((fast_server, slow_server)) as cpus,
    ):
        urls = (fast_server.url, slow_server.url)
        # Both benches run side by side, a CPU each (a shared machine swings by 4x from minute to minute),
        # first at concurrency 8 alone to set the budget between the two p99s, so that the fast model meets it
        # and the slow one (several times less throughput, so several times the latency at the same
        # concurrency, by Little's law) does not.
        calibration = bench_side_by_side(
            (tmp_path, tmp_path),
            urls,
            cpus,
            "--concurrency",
            "8",
            "--duration",
            "3",
            "--p99-ms",
            "100000",
            extra=("--no-plot",),
        )
        p99s = [report["levels"][0]["client"]["p99_ms"] for report in calibration]
        budget = round(math.sqrt(p99s[0] * p99s[1]))
        common = ("--concurrency", "1,2,4,8", "--duration", "3", "--warmup", "1", "--p99-ms", str(budget))
        fast, slow = bench_side_by_side(
            (project, tmp_path), urls, cpus, *common, extra=("--plot", str(plot), "--write")
        )

    quick, heavy = fast["recommendation"], slow["recommendation"]
    print(f"calibration p99s {p99s}, budget {budget} ms\nfast {quick}\nslow {heavy}")  # shown with -s
    assert quick is not None, fast["verdict"]
    assert quick["limit_concurrency"] == 8 or fast["levels"][-1]["client"]["p99_ms"] > budget
    if heavy is None:  # the far end of "lower": not even one request at a time met the budget
        assert not slow["levels"][0]["within_budget"] and "no level met" in slow["verdict"]
    else:
        assert heavy["throughput"] < quick["throughput"]
        assert heavy["limit_concurrency"] < quick["limit_concurrency"]
        assert heavy["hard_limit"] < quick["hard_limit"]
        assert heavy["max_batch_size"] <= quick["max_batch_size"]
    assert max(level["client"]["throughput"] for level in slow["levels"]) < quick["throughput"]
    fast_device = fast["levels"][0]["server"]["device_ms_mean"]
    slow_device = slow["levels"][0]["server"]["device_ms_mean"]
    assert slow_device > 3 * fast_device, (fast_device, slow_device)
    assert fast["generator"] == "wrk" and "wrk" in fast["method"] and "/metrics" in fast["method"]
    assert not next(level for level in slow["levels"] if level["concurrency"] == 8)["within_budget"]

    # the PNG plot: a real PNG of the size the report draws
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and fast["plot"] == str(plot)
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (960, 540)

    # --write: the recommendation is in bake.toml, every comment of `bake init` kept, and bake reads it back
    written = (project / "bake.toml").read_text()
    kept = [line for line in original.splitlines() if line.startswith("#") and "max_" not in line]
    assert all(line in written for line in kept)
    document = tomlkit.parse(written)
    assert document["serve"]["max_batch_size"] == quick["max_batch_size"]
    assert document["serve"]["max_queue"] == quick["max_queue"]
    config = load_config({}, read_environment({}), project / "bake.toml")
    assert config.serve.max_batch_size == quick["max_batch_size"]
    assert config.serve.max_wait_ms == pytest.approx(quick["max_wait_ms"])
    assert config.serve.max_queue == quick["max_queue"]
    assert f"p99 <= {budget} ms" in written


@pytest.mark.slow
def test_in_process_client_and_default_url(fast_server: ServerProcess, tmp_path: Path) -> None:
    record_launch(tmp_path, fast_server.url, "local")
    report = bench_json(
        tmp_path, "--client", "httpx", "--concurrency", "1,2", "--duration", "2", "--warmup", "0"
    )
    assert report["server"]["url"] == fast_server.url
    assert report["generator"] == "httpx" and "httpx" in report["method"]
    assert report["budget"]["origin"].startswith("4 x the p99 at concurrency 1")
    assert report["budget"]["p99_ms"] == pytest.approx(4 * report["levels"][0]["client"]["p99_ms"])
    assert (tmp_path / ".bake" / "bench.png").is_file()


@pytest.mark.slow
def test_terminal_plot_on_a_tty(fast_server: ServerProcess, tmp_path: Path) -> None:
    python = shlex.quote(sys.executable)
    command = f"{python} -m bake bench {fast_server.url} --concurrency 1,2 --duration 1 --warmup 0"
    env = {**os.environ, "COLUMNS": "140", "TERM": "xterm"}
    result = subprocess.run(
        ["script", "-qec", command + " --no-plot", "/dev/null"],
        check=False,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "throughput (req/s)" in result.stdout and "p99 (ms; | = budget" in result.stdout
    assert "█" in result.stdout and "\x1b[" in result.stdout  # bars, in colour
    piped = bench(
        tmp_path, fast_server.url, "--concurrency", "1", "--duration", "1", "--warmup", "0", "--no-plot"
    )
    assert piped.returncode == 0 and "throughput (req/s)" not in piped.stdout and "\x1b[" not in piped.stdout
    assert "conc  req/s" in piped.stdout and "bench: concurrency   1:" in piped.stderr


@pytest.mark.slow
def test_a_server_with_an_api_key(models: dict[str, Path], tmp_path: Path) -> None:
    key = "bench-key-" + uuid.uuid4().hex
    env = {"BAKE_MODEL": str(models["fast"]), **SERVE_ENV, "BAKE_API_KEY": key}
    with ServerProcess(env, tmp_path / "keyed.log") as server:
        refused = bench(tmp_path, server.url, env={"BAKE_API_KEY": ""})
        assert refused.returncode == 1 and "requires an API key" in refused.stderr
        assert "set BAKE_API_KEY" in refused.stderr
        args = ("--concurrency", "2", "--duration", "1", "--warmup", "0", "--no-plot")
        report = bench_json(tmp_path, server.url, *args, env={"BAKE_API_KEY": key})
    assert report["levels"][0]["client"]["requests"] > 0 and report["levels"][0]["server"]["answers"] > 0
    assert key not in json.dumps(report)


@pytest.mark.slow
def test_text_to_image_is_sent_a_prompt(tmp_path: Path) -> None:
    model = make_text_to_image_pipeline(tmp_path / "sd")
    env = {"BAKE_MODEL": str(model), "BAKE_MAX_BATCH_SIZE": "2", "BAKE_LOG_LEVEL": "warning"}
    with ServerProcess(env, tmp_path / "sd.log") as server:
        report = bench_json(
            tmp_path,
            server.url,
            "--concurrency",
            "1,2",
            "--duration",
            "2",
            "--warmup",
            "0",
            "-p",
            "num_inference_steps=2",
            "-p",
            "width=32",
            "-p",
            "height=32",
            "--no-plot",
        )
    assert report["server"]["task"] == "text-to-image"
    assert "prompt" in report["request"] and '"num_inference_steps": 2' in report["request"]
    assert all(level["client"]["requests"] > 0 for level in report["levels"])


@pytest.mark.slow
def test_errors_are_one_line_with_the_fix(fast_server: ServerProcess, tmp_path: Path) -> None:
    result = bench(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bake: error: no server to bench: pass its URL, or run `bake launch` in this directory first"
    )
    result = bench(tmp_path, "http://127.0.0.1:9")
    assert result.returncode == 1 and result.stderr.startswith(
        "bake: error: no server answers at http://127.0.0.1:9"
    )
    assert "bake launch" in result.stderr
    result = bench(tmp_path, fast_server.url, "--prompt", "a cat")
    assert result.returncode == 2 and "takes an image, not a prompt" in result.stderr
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    result = bench(tmp_path, fast_server.url, "--input", str(not_an_image))
    assert result.returncode == 1 and "the server answered 415 to the first request" in result.stderr
    result = bench(tmp_path, fast_server.url, "--concurrency", "1,x")
    assert result.returncode == 2 and "--concurrency" in result.stderr
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(images.photo(320, 240))
    report = bench_json(
        tmp_path,
        fast_server.url,
        "--input",
        str(photo),
        "--concurrency",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--no-plot",
        "--p99-ms",
        "0.001",
    )
    assert report["recommendation"] is None and "no level met" in report["verdict"]
    assert report["request"].startswith("photo.jpg")


@pytest.mark.slow
def test_metrics_window_counts_what_was_sent(fast_server: ServerProcess) -> None:
    photo = images.photo(160, 120)
    with httpx.Client(timeout=60) as client:
        before = scrape(client, fast_server.url)
        for _ in range(4):
            assert client.post(f"{fast_server.url}/predict", content=photo).status_code == 200
        assert client.post(f"{fast_server.url}/predict", content=b"not an image").status_code == 415
        after = scrape(client, fast_server.url)
    assert before.idle and after.idle
    seen = window(before, after)
    assert (seen.answers, seen.errors, seen.batches) == (5, 1, 4)
    assert (seen.batch_mean, seen.batch_p50, seen.batch_p95, seen.batch_max) == (1.0, 1, 1, 1)
    assert seen.device_ms_mean is not None and seen.device_ms_mean > 0
    assert seen.latency_ms_mean is not None and seen.latency_ms_mean > 0


def test_histogram_quantiles() -> None:
    sizes = Histogram(bounds=(1, 2, 3, 4, math.inf), cumulative=(1, 1, 3, 5, 5), count=5, total=15)
    assert (sizes.bucket_quantile(0.2), sizes.bucket_quantile(0.5), sizes.bucket_quantile(1.0)) == (1, 3, 4)
    assert sizes.mean() == 3.0
    waits = Histogram(bounds=(0.001, 0.005, 0.01, math.inf), cumulative=(0, 8, 10, 10), count=10, total=0.05)
    assert waits.quantile(0.5) == pytest.approx(0.001 + 0.004 * 5 / 8)  # linear within (0.001, 0.005]
    assert waits.quantile(0.95) == pytest.approx(0.005 + 0.005 * 1.5 / 2)
    later = Histogram(bounds=waits.bounds, cumulative=(1, 10, 13, 13), count=13, total=0.07)
    assert later.minus(waits) == Histogram(waits.bounds, (1, 2, 3, 3), 3, pytest.approx(0.02))
    assert Histogram((1.0, math.inf), (0, 0), 0, 0).quantile(0.5) is None


def test_state_keeps_build_and_launch(tmp_path: Path) -> None:
    record_build(tmp_path, "bake/model:abc", "org/model")
    record_launch(tmp_path, "http://127.0.0.1:8080", "local")
    record_build(tmp_path, "bake/model:def", "org/model")
    assert last_built_tag(tmp_path) == "bake/model:def"
    assert last_launch_url(tmp_path) == "http://127.0.0.1:8080"
    (tmp_path / ".bake" / "state.json").write_text("[not what bake wrote")
    assert last_launch_url(tmp_path) is None and last_built_tag(tmp_path) is None


def level(concurrency: int, throughput: float, p99_ms: float, batch_p95: int, device_ms: float) -> Level:
    """A measured level with the figures `advise` reads (the rest consistent with them)."""
    seconds = 10.0
    requests = round(throughput * seconds)
    load = LoadResult(
        generator="wrk",
        connections=concurrency,
        requests=requests,
        non2xx=0,
        transport_errors=0,
        seconds=seconds,
        mean_ms=p99_ms / 2,
        p50_ms=p99_ms / 2,
        p90_ms=p99_ms * 0.8,
        p95_ms=p99_ms * 0.9,
        p99_ms=p99_ms,
        max_ms=p99_ms * 1.1,
        client_cpu_s=1.0,
    )
    server = ServerWindow(
        answers=requests,
        errors=0,
        batches=requests // batch_p95,
        batch_mean=batch_p95 * 0.8,
        batch_p50=batch_p95,
        batch_p95=batch_p95,
        batch_max=batch_p95,
        device_ms_mean=device_ms,
        queue_wait_ms_mean=1.0,
        queue_wait_ms_p95=2.0,
        latency_ms_mean=p99_ms / 2,
    )
    return Level(concurrency, load, server)


def test_advice_picks_the_knee_and_the_limit() -> None:
    facts = ServerFacts(
        url="http://server",
        model="m",
        task="image-classification",
        device="cpu",
        max_batch_size=8,
        max_wait_ms=10,
        max_queue=256,
    )
    levels = (
        level(1, 40, 20, 1, 5),
        level(2, 75, 30, 2, 8),
        level(4, 140, 60, 4, 20),
        level(8, 150, 120, 8, 36),
        level(16, 152, 260, 8, 38),
    )
    advice, verdict = advise(Ramp(levels, Budget(200, "--p99-ms"), None), facts)
    assert advice is not None
    # knee: the lowest concurrency within 90% of the best throughput within the budget (150 at 8)
    assert (advice.knee_concurrency, advice.limit_concurrency) == (4, 8)
    assert (advice.max_batch_size, advice.max_queue, advice.hard_limit) == (4, 4, 8)
    assert advice.max_wait_ms == 10.0  # half of the knee's 20 ms device time, within its 140 ms headroom
    assert advice.notes == () and "4 to 8 requests in flight" in verdict

    tight, _ = advise(Ramp(levels, Budget(65, "--p99-ms"), None), facts)
    assert tight is not None and (tight.knee_concurrency, tight.limit_concurrency) == (4, 4)
    assert tight.max_wait_ms == 5.0  # the headroom (65 - 60 ms) is less than half the device time
    assert tight.max_queue == 1 and "the least the server takes" in tight.reasons[-1]

    rising = (level(1, 40, 20, 1, 5), level(4, 100, 40, 4, 20), level(8, 150, 60, 8, 36))
    loose, _ = advise(Ramp(rising, Budget(1000, "--p99-ms"), None), facts)
    assert loose is not None and (loose.knee_concurrency, loose.max_batch_size) == (8, 8)
    assert any("filled the server's max_batch_size (8)" in note for note in loose.notes)
    assert any("the hard limit may be higher" in note for note in loose.notes)

    nothing, verdict = advise(Ramp(levels, Budget(10, "--p99-ms"), None), facts)
    assert nothing is None and verdict.startswith("no level met p99 <= 10 ms")


def test_a_busy_client_is_reported() -> None:
    def run(connections: int, mean_ms: float, cpu_s: float) -> Level:
        load = LoadResult(
            generator="httpx",
            connections=connections,
            requests=1000,
            non2xx=0,
            transport_errors=0,
            seconds=10.0,
            mean_ms=mean_ms,
            p50_ms=mean_ms,
            p90_ms=mean_ms,
            p95_ms=mean_ms,
            p99_ms=mean_ms,
            max_ms=mean_ms,
            client_cpu_s=cpu_s,
        )
        return Level(connections, load, None)

    assert run(8, 80.0, 2.0).client_limits() == []  # 100 req/s x 80 ms = 8 in flight, a fifth of a core
    saturated = run(8, 80.0, 9.5).client_limits()
    assert saturated == ["the load generator used 95% of a CPU core"]
    starved = run(8, 50.0, 2.0).client_limits()  # 100 req/s x 50 ms: only 5 of 8 connections were waiting
    assert starved == ["it kept only 5.0 of 8 requests in flight"]
