"""Security of a running server (issue 13): the API key on every route, and remote inputs.

- With `BAKE_API_KEY` (two keys: rotation) every route of the OpenAPI document, the document and its page
  included, answers 401 without a valid key in its protocol's shape, except /health and /ready; both keys
  work; keys are compared in constant time (`hmac.compare_digest`, every key every time).
- The key never appears in an answer (/info, /metrics, the document, errors, 401s), in the server's log (at
  debug level, access log included) or in its metrics.
- Remote inputs (image URLs) are fetched only from hosts the operator lists, within the body size limit and
  the fetch timeout, and a redirect to any host the list does not allow (the cloud metadata address,
  localhost) is refused, over the real HTTP path of a prediction.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve import auth, outbound
from serve.contract.routes import OPEN_PATHS
from serve.contract.settings import ServeSettings
from serve.errors import BadRequest, PayloadTooLarge
from tests.fixtures import images
from tests.fixtures.servers import ServerProcess

OLD_KEY = "bake-old-key-5b0f6c1e2d"
NEW_KEY = "bake-new-key-93a7d04e8c"
MODEL_NAME = "guarded"
PHOTO = images.photo(160, 120, seed=4)
PARAMETERS = {"model_name": MODEL_NAME, "model_version": "1", "prediction_id": "p1"}


class Origin:
    """A real HTTP server on 127.0.0.1 that remote-input URLs point at: an image, a body too large, a slow
    answer, and redirects."""

    def __init__(self) -> None:
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                route = origin.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                status, headers, body = route()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"

        def slow() -> tuple[int, dict[str, str], bytes]:
            time.sleep(5)
            return 200, {}, PHOTO

        self.routes = {
            "/photo.jpg": lambda: (200, {"Content-Type": "image/jpeg"}, PHOTO),
            "/huge.jpg": lambda: (200, {}, b"\xff" * 3_000_000),
            "/slow.jpg": slow,
            "/to-metadata": lambda: (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-localhost": lambda: (302, {"Location": f"http://localhost:{port}/photo.jpg"}, b""),
            "/to-photo": lambda: (302, {"Location": f"{self.url}/photo.jpg"}, b""),
        }
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def guarded(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {
        "BAKE_MODEL": str(tiny_models["resnet"]),
        "BAKE_MODEL_NAME": MODEL_NAME,
        "BAKE_API_KEY": f"{OLD_KEY},{NEW_KEY}",
        "BAKE_LOG_LEVEL": "debug",
        "BAKE_REMOTE_INPUT_HOSTS": "127.0.0.1",
        "BAKE_REMOTE_INPUT_TIMEOUT_S": "2",
        "BAKE_MAX_BODY_BYTES": "2000000",
    }
    with ServerProcess(env, tmp_path_factory.mktemp("guarded") / "server.log") as server:
        yield server


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def every_route(url: str) -> list[tuple[str, str]]:
    """(method, path) of every operation in the server's OpenAPI document, plus the document and its page."""
    document = httpx.get(url + "/openapi.json", headers=bearer(NEW_KEY)).json()
    routes = [("GET", "/openapi.json"), ("GET", "/docs")]
    for template, operations in document["paths"].items():
        path = template.format(**PARAMETERS)
        routes += [(method.upper(), path) for method in operations]
    return routes


@pytest.mark.slow
def test_every_route_but_the_probes_needs_one_of_the_keys(guarded: ServerProcess) -> None:
    routes = every_route(guarded.url)
    assert len(routes) >= 20
    for method, path in routes:
        without = httpx.request(method, guarded.url + path, json={} if method != "GET" else None)
        wrong = httpx.request(method, guarded.url + path, headers=bearer(NEW_KEY + "x"))
        if path in OPEN_PATHS:
            assert without.status_code == 200, path
            continue
        for answer in (without, wrong):
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.headers["content-type"] == "application/json", (method, path)
        for key in (OLD_KEY, NEW_KEY):
            answer = httpx.request(method, guarded.url + path, headers=bearer(key))
            assert answer.status_code != 401, (method, path, key)


@pytest.mark.slow
def test_the_key_appears_in_no_answer_log_or_metric(guarded: ServerProcess) -> None:
    texts = []
    for method, path in every_route(guarded.url):
        for headers in (bearer(NEW_KEY), bearer(OLD_KEY + "-and-more"), {"Authorization": NEW_KEY}):
            answer = httpx.request(method, guarded.url + path, headers=headers, content=b"{nope")
            texts.append(f"{answer.headers}\n{answer.text}")
    texts.append(httpx.post(guarded.url + "/predict", content=PHOTO, headers=bearer(OLD_KEY)).text)
    texts.append(httpx.get(guarded.url + "/metrics", headers=bearer(OLD_KEY)).text)
    info = httpx.get(guarded.url + "/info", headers=bearer(OLD_KEY)).json()
    assert info["auth"] is True
    for key in (OLD_KEY, NEW_KEY):
        for fragment in (key, key[:12], key[-12:]):
            assert not any(fragment in text for text in texts), fragment
            assert fragment not in guarded.log(), fragment
    assert "GET /info" in guarded.log(), "the access log was on: requests were logged, keys were not"


class CountingCompare:
    """`hmac.compare_digest`, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = auth.hmac.compare_digest

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls += 1
        return self._real(a, b)


@pytest.mark.parametrize("given", [f"Bearer {OLD_KEY}", f"Bearer {NEW_KEY}", "Bearer nope", ""])
async def test_keys_are_compared_in_constant_time_with_every_key_every_time(
    given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compare = CountingCompare()
    monkeypatch.setattr(auth.hmac, "compare_digest", compare)
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    async def render_send(message: Any) -> None:
        pass

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    def render(_path: str, error: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"error": error.message}, status_code=401)

    middleware = auth.BearerAuthMiddleware(app, api_key=f"{OLD_KEY},{NEW_KEY}, third-key", render=render)
    headers = [(b"authorization", given.encode())] if given else []
    scope = {"type": "http", "path": "/predict", "headers": headers, "method": "POST"}
    await middleware(scope, receive, render_send)
    assert compare.calls == 3, "every key is compared, whichever matches (no early exit)"
    assert reached == ([True] if given.removeprefix("Bearer ") in (OLD_KEY, NEW_KEY) else [])


# ---- remote inputs ----


def policy(hosts: str) -> outbound.HostPolicy:
    return outbound.remote_inputs(ServeSettings.from_environment({"BAKE_REMOTE_INPUT_HOSTS": hosts}))


def test_remote_inputs_are_off_unless_hosts_are_listed(origin: Origin) -> None:
    with pytest.raises(outbound.Refused, match="allowed hosts: none"):
        outbound.fetch(origin.url + "/photo.jpg", policy(""), max_bytes=10**6, timeout_s=2)
    with pytest.raises(outbound.Refused, match="not allowed"):
        outbound.fetch(origin.url + "/photo.jpg", policy("images.example.com"), max_bytes=10**6, timeout_s=2)
    assert (
        outbound.fetch(origin.url + "/photo.jpg", policy("127.0.0.1"), max_bytes=10**6, timeout_s=2) == PHOTO
    )


@pytest.mark.parametrize(
    ("path", "error", "fragment"),
    [
        ("/to-metadata", outbound.Refused, "169.254.169.254 is not allowed"),
        ("/to-localhost", outbound.Refused, "localhost is not allowed"),
        ("/huge.jpg", PayloadTooLarge, "over the limit"),
        ("/slow.jpg", BadRequest, "timed out"),
        ("/nowhere.jpg", BadRequest, "answered 404"),
    ],
)
def test_redirects_size_and_time_of_remote_inputs_are_checked(
    origin: Origin, path: str, error: type[Exception], fragment: str
) -> None:
    started = time.monotonic()
    with pytest.raises(error, match=fragment):
        outbound.fetch(origin.url + path, policy("127.0.0.1"), max_bytes=2_000_000, timeout_s=1)
    assert time.monotonic() - started < 4


def test_an_allowed_redirect_is_followed(origin: Origin) -> None:
    assert (
        outbound.fetch(origin.url + "/to-photo", policy("127.0.0.1"), max_bytes=10**6, timeout_s=2) == PHOTO
    )


def test_a_wildcard_allows_public_addresses_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """`*.example.com` is for public hosts: a name under it that resolves to a private address is refused
    (the resolver is the one part replaced: nothing here can resolve public names)."""
    answers = {"cdn.example.com": "93.184.216.34", "internal.example.com": "10.0.0.7"}

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", resolve)
    wildcard = policy("*.example.com")
    wildcard.check("https://cdn.example.com/cat.jpg")
    with pytest.raises(outbound.Refused, match="private address"):
        wildcard.check("https://internal.example.com/cat.jpg")
    with pytest.raises(outbound.Refused, match="http"):
        wildcard.check("file:///etc/passwd")


@pytest.mark.slow
def test_a_prediction_from_a_url_follows_the_same_rules(guarded: ServerProcess, origin: Origin) -> None:
    def cog(url: str) -> httpx.Response:
        return httpx.post(
            guarded.url + "/predictions", json={"input": {"image": url}}, headers=bearer(NEW_KEY), timeout=30
        )

    allowed = cog(origin.url + "/photo.jpg")
    assert allowed.status_code == 200 and allowed.json()["status"] == "succeeded"
    for path, fragment in (
        ("/to-metadata", "169.254.169.254"),
        ("/huge.jpg", "limit"),
        ("/slow.jpg", "timed out"),
    ):
        refused = cog(origin.url + path)
        assert refused.status_code == 422 and fragment in refused.json()["error"], refused.text
