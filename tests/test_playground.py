"""The playground (`GET /` in a browser) and the offline /docs, in a real headless Chromium against real
servers (issue 12).

Servers are `python -m serve` with tiny random-weight models published on the local Hub and served offline.
The browser is Debian's Chromium (`tests.fixtures.browser`): every request a page makes that leaves the
server's origin is blocked and recorded, and every test ends by asserting that there was none and that the
page broke no rule of its Content-Security-Policy. Each test's page is kept as a screenshot in
tests/results/playground/ (CI artifacts); docs/playground-*.png are two of them.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.fixtures import images
from tests.fixtures.browser import OfflineVisit, chromium
from tests.fixtures.hub import HubServer, offline_cache
from tests.fixtures.models import make_text_to_image_pipeline
from tests.fixtures.servers import ServerProcess

RESULTS = Path(__file__).parent / "results" / "playground"
CLASSIFIER = "playground/tiny-resnet"
GENERATOR = "playground/tiny-sd"
API_KEY = "playground-test-key-42"
PHOTO = images.photo(160, 120)
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
"""What Chromium sends when it navigates to a page."""
MAX_WAIT_MS = 3000
"""The classifier's batch timer: long enough that a request sent once the page's is queued joins its batch."""

expect.set_options(timeout=30_000)


@dataclass(frozen=True)
class Served:
    url: str
    sha: str


def serve(hub: HubServer, repo: str, folder: Path, root: Path, **settings: str) -> Iterator[Served]:
    cache = offline_cache(hub, repo, folder, root)
    with ServerProcess({**cache.env, **settings}, root / "server.log") as server:
        yield Served(server.url, cache.sha)


@pytest.fixture(scope="module")
def classifier(
    hub: HubServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("playground-classifier")
    settings = {"BAKE_MAX_BATCH_SIZE": "2", "BAKE_MAX_WAIT_MS": str(MAX_WAIT_MS)}
    yield from serve(hub, CLASSIFIER, tiny_models["resnet"], root, **settings)


@pytest.fixture(scope="module")
def secured(
    hub: HubServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("playground-secured")
    yield from serve(hub, CLASSIFIER, tiny_models["resnet"], root, BAKE_API_KEY=API_KEY)


@pytest.fixture(scope="module")
def generator(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("playground-generator")
    pipeline = make_text_to_image_pipeline(root / "tiny-sd")
    yield from serve(hub, GENERATOR, pipeline, root, BAKE_MAX_STEPS="5000")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def visit(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[[str], OfflineVisit]]:
    """Open tabs on servers; afterwards keep their screenshots and check that they stayed offline."""
    tabs: list[OfflineVisit] = []

    def open_tab(server_url: str) -> OfflineVisit:
        tabs.append(OfflineVisit(browser, server_url))
        return tabs[-1]

    yield open_tab
    name = re.sub(r"[^\w.-]+", "-", request.node.name).strip("-")
    for index, tab in enumerate(tabs):
        tab.screenshot(RESULTS / f"{name}{f'-{index + 1}' if index else ''}.png")
        tab.close()
    for tab in tabs:
        assert tab.blocked == [], f"the page tried to leave the server: {tab.blocked}"
        assert tab.violations == [], f"the page broke its Content-Security-Policy: {tab.violations}"


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def wait_until(condition: Callable[[], bool], tab: OfflineVisit, timeout: float = 30.0) -> None:
    """Wait for `condition` while the tab's requests go on: Playwright's sync API runs the route handler
    that lets them through only while it is called, so the tab waits, not this thread."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        tab.page.wait_for_timeout(20)


def steps_once_settled(url: str) -> float:
    """The denoising step counter once it stopped moving for half a second."""
    last = metric(url, "bake_inference_steps_total")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = metric(url, "bake_inference_steps_total")
        if now == last:
            return now
        last = now
    raise AssertionError("the step counter never settled")


def upload(tab: OfflineVisit, data: bytes, name: str = "photo.jpg", media_type: str = "image/jpeg") -> None:
    tab.page.set_input_files("#file", files=[{"name": name, "mimeType": media_type, "buffer": data}])


# ---- GET / : the page for browsers, Cog's discovery for everyone else ----


def test_get_root_answers_the_page_to_browsers_and_cog_s_document_to_clients(classifier: Served) -> None:
    page = httpx.get(classifier.url + "/", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["vary"] == "Accept" and "<title>bake playground</title>" in page.text
    assert httpx.head(classifier.url + "/", headers={"Accept": "text/html"}).status_code == 200
    for accept in (None, "*/*", "application/json", "text/html;q=0.5, application/json"):
        headers = {"Accept": accept} if accept else {}
        discovery = httpx.get(classifier.url + "/", headers=headers)
        assert discovery.json()["predictions_url"] == "/predictions", accept
    missing = httpx.get(classifier.url + "/playground/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]


def test_the_page_and_its_assets_alone_are_open_without_the_key(secured: Served) -> None:
    page = httpx.get(secured.url + "/", headers={"Accept": BROWSER_ACCEPT})
    assets = [httpx.get(f"{secured.url}/playground/{name}") for name in ("playground.js", "playground.css")]
    for response in (page, *assets):
        assert response.status_code == 200, response.url
        assert CLASSIFIER not in response.text and secured.sha not in response.text, "no model data"
    refused = [
        httpx.get(secured.url + "/"),
        httpx.get(secured.url + "/", headers={"Accept": "application/json"}),
        httpx.post(secured.url + "/", content=PHOTO, headers={"Accept": BROWSER_ACCEPT}),
        httpx.post(secured.url + "/predict", content=PHOTO),
        httpx.get(secured.url + "/info", headers={"Accept": BROWSER_ACCEPT}),
        httpx.get(secured.url + "/docs", headers={"Accept": BROWSER_ACCEPT}),
        httpx.get(secured.url + "/docs/assets/swagger-ui-bundle.js"),
    ]
    assert [response.status_code for response in refused] == [401] * len(refused)


# ---- image classification ----


def test_a_picked_photo_gets_its_labels_scores_and_the_batch_that_served_it(
    classifier: Served, visit: Callable[[str], OfflineVisit]
) -> None:
    tab = visit(classifier.url)
    page = tab.open()
    expect(page.locator("#fact-model")).to_have_text(CLASSIFIER)
    expect(page.locator("#fact-revision")).to_have_text(f"main @ {classifier.sha[:12]}")
    expect(page.locator("#fact-device")).to_have_text("cpu · float32")
    expect(page.locator("#fact-batching")).to_have_text(f"up to 2, waiting {MAX_WAIT_MS} ms")
    upload(tab, PHOTO)
    # Once the page's request waits for the device, a second one fills its batch of two.
    wait_until(lambda: metric(classifier.url, "bake_queue_depth") == 1, tab)
    mate = httpx.post(classifier.url + "/predict?top_k=5", content=PHOTO, timeout=30)
    assert mate.headers["X-Batch-Size"] == "2"
    expected = mate.json()
    expect(page.locator("#labels li")).to_have_count(5)
    assert page.locator("#labels .label").all_inner_texts() == [item["label"] for item in expected]
    assert page.locator("#labels .score").all_inner_texts() == [f"{item['score']:.3f}" for item in expected]
    widths = page.eval_on_selector_all("#labels .fill", "bars => bars.map((bar) => bar.style.width)")
    assert [float(width.removesuffix("%")) for width in widths] == pytest.approx(
        [item["score"] * 100 for item in expected], abs=1e-3
    )
    expect(page.locator("#classify-stats")).to_contain_text("batch of 2")
    expect(page.locator("#classify-stats")).to_have_text(
        re.compile(r"^\d+ ms · batch of 2 · queued [\d.]+ ms · on the device [\d.]+ ms$")
    )
    assert page.eval_on_selector("#preview", "image => image.naturalWidth") == 160
    expect(page.locator("#error")).to_be_hidden()


GESTURE = """([data, gesture]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "photo.png", { type: "image/png" }));
  const event = gesture === "drop"
    ? new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
    : new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
  (gesture === "drop" ? document.getElementById("drop-zone") : document).dispatchEvent(event);
}"""


@pytest.mark.parametrize("gesture", ["drop", "paste"])
def test_a_dropped_or_pasted_image_is_classified(
    classifier: Served, visit: Callable[[str], OfflineVisit], gesture: str
) -> None:
    tab = visit(classifier.url)
    page = tab.open()
    expect(page.locator("#classify")).to_be_visible()
    png = images.photo(96, 64, seed=3, fmt="PNG")
    with page.expect_request(lambda request: "/predict" in request.url) as sent:
        page.evaluate(GESTURE, [base64.b64encode(png).decode(), gesture])
    assert sent.value.method == "POST" and sent.value.post_data_buffer == png
    expect(page.locator("#labels li")).to_have_count(5)
    expect(page.locator("#classify-stats")).to_contain_text("batch of 1")
    assert page.eval_on_selector("#preview", "image => image.naturalWidth") == 96


def test_bad_files_and_parameters_show_the_server_s_message_and_the_page_keeps_working(
    classifier: Served, visit: Callable[[str], OfflineVisit]
) -> None:
    tab = visit(classifier.url)
    page = tab.open()
    expect(page.locator("#classify")).to_be_visible()
    for name, media_type, data in (
        ("notes.txt", "text/plain", images.not_an_image()),
        ("broken.jpg", "image/jpeg", images.truncated(PHOTO)),
    ):
        refused = httpx.post(classifier.url + "/predict?top_k=5", content=data)
        assert refused.status_code in (400, 415)
        upload(tab, data, name, media_type)
        expect(page.locator("#error")).to_have_text(f"Error {refused.status_code}: {refused.json()['error']}")
        expect(page.locator("#labels li")).to_have_count(0)
    page.fill("#top-k", "0")
    upload(tab, PHOTO)
    expect(page.locator("#error")).to_have_text(re.compile(r"^Error 422: parameters\.top_k: .+"))
    page.fill("#top-k", "3")
    upload(tab, PHOTO)
    expect(page.locator("#labels li")).to_have_count(3)
    expect(page.locator("#error")).to_be_hidden()


def test_the_page_asks_for_the_key_and_sends_it_as_a_bearer_header(
    secured: Served, visit: Callable[[str], OfflineVisit]
) -> None:
    tab = visit(secured.url)
    page = tab.open()
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#status")).to_have_text("Enter the API key to use this server.")
    expect(page.locator("#classify")).to_be_hidden()
    page.fill("#key", "not-the-key")
    page.click("#key-form button")
    expect(page.locator("#status")).to_have_text("The key was refused: the bearer key is not valid")
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key", API_KEY)
    page.click("#key-form button")
    expect(page.locator("#fact-model")).to_have_text(CLASSIFIER)
    expect(page.locator("#key-form")).to_be_hidden()
    upload(tab, PHOTO)
    expect(page.locator("#labels li")).to_have_count(5)
    keys = {
        request.url.removeprefix(tab.origin): request.headers.get("authorization") for request in tab.requests
    }
    assert keys["/"] is None and keys["/playground/playground.js"] is None, "the page loads without the key"
    assert keys["/info"] == keys["/predict?top_k=5"] == f"Bearer {API_KEY}"
    assert page.evaluate("localStorage.length") == 0, "the key stays in the tab (sessionStorage)"


# ---- text to image ----


def test_a_prompt_streams_its_steps_and_shows_the_image(
    generator: Served, visit: Callable[[str], OfflineVisit]
) -> None:
    info = httpx.get(generator.url + "/info").json()
    details = info["task_details"]
    tab = visit(generator.url)
    page = tab.open()
    expect(page.locator("#generate")).to_be_visible()
    expect(page.locator("#fact-revision")).to_have_text(f"main @ {generator.sha[:12]}")
    offered = page.eval_on_selector_all("#scheduler option", "options => options.map((o) => o.value)")
    assert offered == details["schedulers"]
    assert page.input_value("#scheduler") == details["scheduler"]
    assert page.input_value("#steps") == str(details["defaults"]["num_inference_steps"])
    scheduler = next(name for name in details["schedulers"] if name != details["scheduler"])
    page.fill("#prompt", "a red fox in the snow")
    page.fill("#negative-prompt", "blurry")
    page.fill("#steps", "4")
    page.fill("#guidance", "3.5")
    page.fill("#width", "48")
    page.fill("#height", "32")
    page.select_option("#scheduler", scheduler)
    page.fill("#seed", "7")
    with page.expect_request(lambda request: "/predict" in request.url) as sent:
        page.click("#generate-button")
    expect(page.locator("#generated")).to_be_visible()
    body = sent.value.post_data_json
    assert body == {
        "inputs": "a red fox in the snow",
        "parameters": {
            "num_inference_steps": 4,
            "guidance_scale": 3.5,
            "width": 48,
            "height": 32,
            "scheduler": scheduler,
            "negative_prompt": "blurry",
            "seed": 7,
        },
    }
    assert sent.value.headers["accept"] == "text/event-stream"
    assert page.eval_on_selector("#progress", "bar => [bar.value, bar.max]") == [4, 4]
    expect(page.locator("#progress-text")).to_have_text("Step 4 of 4")
    expect(page.locator("#generate-stats")).to_have_text(re.compile(r"^[\d.]+ s · 4 steps · seed 7$"))
    shown = page.get_attribute("#generated", "src")
    assert shown is not None and shown.startswith("data:image/png;base64,")
    same = httpx.post(generator.url + "/predict", json=body, headers={"Accept": "image/png"}, timeout=60)
    assert base64.b64decode(shown.split(",", 1)[1]) == same.content, "the route's image for the request"
    assert same.headers["X-Batch-Size"] == "1" and float(same.headers["X-Inference-Time-Ms"]) > 0


def test_cancel_stops_the_generation_on_the_server(
    generator: Served, visit: Callable[[str], OfflineVisit]
) -> None:
    steps = 2000
    before = metric(generator.url, "bake_inference_steps_total")
    tab = visit(generator.url)
    page = tab.open()
    expect(page.locator("#generate")).to_be_visible()
    page.fill("#prompt", "a very long one")
    for field, value in (("#steps", steps), ("#width", 32), ("#height", 32)):
        page.fill(field, str(value))
    page.click("#generate-button")
    expect(page.locator("#progress-text")).to_have_text(re.compile(rf"^Step ([3-9]|\d\d+) of {steps}$"))
    page.click("#cancel-button")
    expect(page.locator("#progress-text")).to_have_text(re.compile(rf"^Cancelled at step \d+ of {steps}$"))
    expect(page.locator("#generate-button")).to_be_enabled()
    expect(page.locator("#cancel-button")).to_be_disabled()
    expect(page.locator("#generated")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    ran = steps_once_settled(generator.url) - before
    assert ran < steps / 4, f"ran {ran} of {steps} steps after the page cancelled"


def test_a_refused_prompt_shows_the_server_s_message(
    generator: Served, visit: Callable[[str], OfflineVisit]
) -> None:
    prompt = "a fox " * 40
    refused = httpx.post(generator.url + "/predict", json={"inputs": prompt})
    assert refused.status_code == 422
    tab = visit(generator.url)
    page = tab.open()
    expect(page.locator("#generate")).to_be_visible()
    page.fill("#prompt", prompt)
    page.click("#generate-button")
    expect(page.locator("#error")).to_have_text(f"Error 422: {refused.json()['error']}")
    expect(page.locator("#generate-button")).to_be_enabled()


# ---- /docs ----


def test_docs_render_swagger_ui_from_the_server_itself(
    classifier: Served, visit: Callable[[str], OfflineVisit]
) -> None:
    tab = visit(classifier.url)
    page = tab.open("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("bake model server")
    expect(page.locator(".opblock-summary-path[data-path='/predict']")).to_be_visible()
    expect(page.locator(".opblock-summary-path[data-path='/predictions']")).to_be_visible()
    loaded = {request.url.removeprefix(tab.origin) for request in tab.requests}
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/openapi.json"} <= loaded
