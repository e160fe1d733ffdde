"""Content negotiation: which of the media types a route can answer with the client prefers (`Accept`)."""

from __future__ import annotations

from collections.abc import Sequence


def preferred_media_type(accept: str, offered: Sequence[str]) -> str:
    """The type of `offered` that `accept` ranks highest; the first offered when no header or nothing matches.

    Follows RFC 9110: types ranked by their `q` weight (default 1), then by order; `q=0` refuses a type;
    `type/*` and `*/*` match the offered types in their order. A client whose header matches nothing
    gets the default instead of 406 (Inference API clients send `Accept: image/png` or nothing).
    """
    ranked: list[tuple[float, int, str]] = []
    refused: set[str] = set()
    for position, item in enumerate(accept.split(",")):
        media_type, _, options = item.strip().partition(";")
        media_type = media_type.strip().lower()
        if not media_type:
            continue
        weight = _weight(options)
        if weight <= 0:
            refused.add(media_type)
            continue
        ranked.append((-weight, position, media_type))
    for _, _, media_type in sorted(ranked):
        for candidate in offered:
            if candidate not in refused and _matches(media_type, candidate):
                return candidate
    return offered[0]


def _weight(options: str) -> float:
    for option in options.split(";"):
        name, _, value = option.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 1.0
    return 1.0


def _matches(pattern: str, media_type: str) -> bool:
    if pattern in ("*/*", media_type):
        return True
    return pattern.endswith("/*") and media_type.startswith(pattern[:-1])
