"""Small helpers for tests that build outbox contents by hand."""

from __future__ import annotations

from buffer.store import EnvelopeMeta, Store


def enqueue(store: Store, payload: bytes, meta: EnvelopeMeta,
            cursor: tuple[str, int] | None = None) -> int:
    """Append `payload` as the chain's next envelope through the sealer's one write path;
    `meta.seq` must be that next seq (enqueue_built raises ValueError otherwise)."""
    return store.outbox.enqueue_built(lambda _seq, _prev: (payload, meta), cursor)
