"""Checkpoint retention: a train job keeps its newest ``CGAN_KEEP_CHECKPOINTS`` checkpoints (default 3; the
final one is the newest) and deletes older ones from the object store, right after a new one is complete."""
from __future__ import annotations

import re

STEP_FOLDER = re.compile(r"/step-(\d+)/")


def prune_checkpoints(store, checkpoints_prefix: str, keep: int) -> list[int]:
    """Delete every ``<checkpoints_prefix>/step-N/`` but the ``keep`` highest N; returns the steps deleted."""
    steps = sorted({int(m.group(1)) for key in store.list(checkpoints_prefix.rstrip("/") + "/step-") if (m := STEP_FOLDER.search(key))})
    doomed = steps[: max(len(steps) - keep, 0)]
    for step in doomed:
        store.delete_prefix(f"{checkpoints_prefix.rstrip('/')}/step-{step:07d}/")
    return doomed
