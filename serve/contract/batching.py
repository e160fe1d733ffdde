"""The batch sizes a server runs: the runtime pads every batch up to one of them, and the compile stage
checks the compiled forward pass at each."""

from __future__ import annotations


def bucket_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes the device runs: powers of two below `max_batch_size`, then `max_batch_size`."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if (1 << i) < max_batch_size]
    return [*sizes, max_batch_size]
