"""`bake predict`'s request: one input to a server, progress while it works, and what it answered.

- A prompt (text-to-image) goes as JSON with `Accept: text/event-stream`: the server reports every denoising
  step (a progress bar on a terminal), then sends the images, which are written to files.
- An image file (image classification) goes as its bytes; the answer is the labels, best first.

Whatever goes wrong is one `UserError`: `PredictFailed` when the server does not answer or answers an error
(its own message, with what to do for its status), `ConfigError` for an input or output path that cannot be
used or a URL that is none.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from bake.errors import ConfigError, Interrupted, PredictFailed
from bake.terminal import Activity
from serve.contract import routes
from serve.contract.tasks import IMAGE_CLASSIFICATION, TEXT_TO_IMAGE

EVENT_STREAM = "text/event-stream"
_TIMEOUT = httpx.Timeout(10.0, read=600.0)
"""Connecting must be quick; an answer (or, streamed, the next step) may take minutes on a slow device."""
_FIXES = {
    400: "check the input",
    401: "set BAKE_API_KEY to one of the server's API keys",
    403: "set BAKE_API_KEY to one of the server's API keys",
    413: "send a smaller input",
    415: "send an image file (JPEG, PNG, WebP, ...)",
    422: "check the input and its parameters (-p KEY=VALUE)",
    503: "the server is busy or still loading: retry in a moment",
    504: "the request took longer than the server's deadline: ask for less, or raise BAKE_TIMEOUT_S",
}


@dataclass(frozen=True)
class WrittenImage:
    """An image the server generated, as written to a file."""

    path: str
    bytes: int
    media_type: str
    seed: int | None


@dataclass(frozen=True)
class Prediction:
    """What the server answered, and how long it took."""

    url: str
    task: str
    seconds: float
    labels: list[dict[str, Any]] | None = None
    images: tuple[WrittenImage, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """What `bake predict --json` prints."""
        output = self.labels if self.labels is not None else [asdict(image) for image in self.images]
        return {"url": self.url, "task": self.task, "seconds": round(self.seconds, 3), "output": output}

    def text(self) -> str:
        """For a person: one label a line with its score, or the files written."""
        if self.labels is not None:
            return "\n".join(
                f"{item.get('score', 0.0):.4f}  {item.get('label', '?')}" for item in self.labels
            )
        return "\n".join(
            f"wrote {image.path} ({image.bytes} bytes"
            + (f", seed {image.seed}" if image.seed is not None else "")
            + f", {self.seconds:.1f} s)"
            for image in self.images
        )


def check_url(url: str) -> str:
    """`url` without a trailing slash; `ConfigError` unless it is an http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"--url {url!r} is not an http(s) URL", "pass e.g. --url http://127.0.0.1:8080")
    return url.rstrip("/")


def ask(
    url: str,
    *,
    task: str | None,
    value: str,
    parameters: dict[str, Any],
    api_key: str | None,
    output_path: Path | None,
    stream: TextIO,
) -> Prediction:
    """Send `value` to the server at `url` (for `task`; None: ask its /info) and return its answer."""
    url = check_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=_TIMEOUT, headers=headers) as client, _transport_errors(url):
            if task is None:
                with Activity(stream, f"asking {url} what it serves"):
                    task = _task_of(client, url, value)
            started = time.monotonic()
            if task == TEXT_TO_IMAGE:
                images = _generate(client, url, value, parameters, output_path, stream)
                return Prediction(url, task, time.monotonic() - started, images=images)
            labels = _classify(client, url, value, parameters, stream)
            return Prediction(url, task, time.monotonic() - started, labels=labels)
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped waiting for {url}",
            "nothing to clean up: the server drops a request once its client leaves",
        ) from None


@contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    """httpx's errors as `PredictFailed`: no answer, or too late."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise PredictFailed(
            f"{url} did not answer in time ({type(error).__name__})",
            "the server may be overloaded or stuck: retry, or see its log (`bake logs NAME`)",
        ) from None
    except httpx.HTTPError as error:
        raise PredictFailed(
            f"no answer from {url} ({error or type(error).__name__})",
            "check that the server runs there (`bake ps`) and the URL (--url)",
        ) from None


def _task_of(client: httpx.Client, url: str, value: str) -> str:
    """The served task, from the server's /info (or, if it does not say, from what `value` is)."""
    response = client.get(f"{url}{routes.INFO}")
    _raise_for_status(response)
    task = _json(response).get("task")
    if isinstance(task, str) and task:
        return task
    return IMAGE_CLASSIFICATION if Path(value).is_file() else TEXT_TO_IMAGE


def _classify(
    client: httpx.Client, url: str, value: str, parameters: dict[str, Any], stream: TextIO
) -> list[dict[str, Any]]:
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{value} is not a file", "this model classifies images: pass an image file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {value} ({error.strerror})", "check the file's permissions") from None
    with Activity(stream, "waiting for the answer"):
        response = client.post(f"{url}{routes.PREDICT}", content=data, params=parameters)
    _raise_for_status(response)
    labels = _json(response)
    if not isinstance(labels, list):
        raise PredictFailed(f"the server answered {labels!r}, not a list of labels", "is it a bake server?")
    return labels


def _generate(
    client: httpx.Client,
    url: str,
    prompt: str,
    parameters: dict[str, Any],
    output_path: Path | None,
    stream: TextIO,
) -> tuple[WrittenImage, ...]:
    body = {"inputs": prompt, "parameters": parameters} if parameters else {"inputs": prompt}
    images: list[WrittenImage] = []
    with (
        Activity(stream, "generating") as activity,
        client.stream(
            "POST", f"{url}{routes.PREDICT}", json=body, headers={"Accept": EVENT_STREAM}
        ) as response,
    ):
        if response.status_code != 200:
            response.read()
            _raise_for_status(response)
        media_type = response.headers.get("content-type", "")
        if media_type.startswith("image/"):  # a server that does not stream
            response.read()
            return (_write(response.content, media_type, _seed(response), 0, output_path),)
        for name, data in _events(response.iter_lines()):
            if name == "error":
                status = int(data.get("status", 500))
                raise PredictFailed(
                    f"the server answered {status}: {data.get('error')}", _FIXES.get(status, _SEE_LOG)
                )
            if name == "done":
                break
            try:
                if name == "progress":
                    activity.update(int(data["step"]), int(data["total"]))
                elif name == "image":
                    content = base64.b64decode(data["image"], validate=True)
                    seed, index = data.get("seed"), int(data.get("index", len(images)))
                    images.append(
                        _write(content, data.get("media_type", "image/png"), seed, index, output_path)
                    )
            except (KeyError, TypeError, ValueError):
                raise PredictFailed(f"the server sent a {name} event bake cannot read", _SEE_LOG) from None
    if not images:
        raise PredictFailed("the server's answer held no image", _SEE_LOG)
    return tuple(images)


_SEE_LOG = "see the server's log (`bake logs NAME`)"


def _events(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events as (name, JSON data), from the stream's lines."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield name, _event_data(name, "\n".join(data))
            name, data = "message", []
            continue
        field, _, text = line.partition(":")
        if field == "event":
            name = text.strip()
        elif field == "data":
            data.append(text.removeprefix(" "))


def _event_data(name: str, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise PredictFailed(f"the server sent a {name} event that is not a JSON object", _SEE_LOG)
    return data


def _seed(response: httpx.Response) -> int | None:
    seed = response.headers.get("x-seed", "")
    return int(seed) if seed.isdigit() else None


def _write(
    content: bytes, media_type: str, seed: int | None, index: int, output_path: Path | None
) -> WrittenImage:
    """Write image number `index` to `output_path` (default output.<format>; `-<index>` after the first)."""
    suffix = "." + media_type.split("/", 1)[-1].split(";")[0]
    path = output_path or Path("output" + suffix)
    if index:
        path = path.with_name(f"{path.stem}-{index}{path.suffix}")
    try:
        path.write_bytes(content)
    except OSError as error:
        raise ConfigError(f"cannot write {path} ({error.strerror})", "pass -o with a writable path") from None
    return WrittenImage(str(path), len(content), media_type, seed)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    message: Any = response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            document = response.json()
            message = document.get("error", document) if isinstance(document, dict) else document
        except ValueError:
            pass
    if not isinstance(message, str):
        message = json.dumps(message)
    raise PredictFailed(
        f"the server answered {response.status_code}: {message[:500]}",
        _FIXES.get(response.status_code, _SEE_LOG),
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise PredictFailed(
            f"the server's answer is not JSON: {response.text[:120]!r}", "is the URL a bake server?"
        ) from None
