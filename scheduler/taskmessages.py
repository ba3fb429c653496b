"""What a task message is: the task name of each job kind, priorities, and the message itself.

``worker.celery_app`` configures Celery with these constants. :func:`redis_message` builds the message a
Celery client would put on a Redis broker (Celery's documented message protocol 2, in the envelope of
kombu's Redis transport), so the submit hot path (``scheduler.lean``) sends it without importing
Celery; ``tests/test_lean.py`` compares it field by field with what Celery itself sends, and runs it on
a real worker.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

TASK_TRAIN = "cganctl.train"
TASK_EVALUATE = "cganctl.evaluate"
TASK_GENERATE_SHARD = "cganctl.generate_shard"
TASK_FOR_KIND = {"train": TASK_TRAIN, "evaluate": TASK_EVALUATE, "generate": TASK_GENERATE_SHARD}
PRIORITY_LEVELS = 10  # cganctl priority 0 (lowest) .. 9 (highest); Redis serves 0 first, so it is inverted
QUEUE_KEY_SEP = ":"  # kombu's Redis transport option ``sep``: a priority list is "<queue>:<n>" (n > 0)


def broker_priority(priority: int) -> int:
    return PRIORITY_LEVELS - 1 - priority


def task_args(job_id: str, shards: list[int] | None) -> list[tuple]:
    """The argument tuples of a job's messages: ``(job_id, shard)`` per listed shard, else ``(job_id,)``."""
    return [(job_id, i) for i in shards] if shards is not None else [(job_id,)]


def redis_list_key(queue: str, level: int) -> str:
    """The Redis list holding ``queue``'s messages of broker priority ``level`` (kombu ``Channel._q_for_pri``)."""
    return f"{queue}{QUEUE_KEY_SEP}{level}" if level else queue


def priority_lists(queue: str) -> list[str]:
    """Every Redis list kombu keeps for ``queue``, one per priority level (``queue``, ``queue:1`` .. ``queue:9``)."""
    return [redis_list_key(queue, level) for level in range(PRIORITY_LEVELS)]


def redis_message(task: str, args: tuple, queue: str, priority: int) -> dict[str, Any]:
    """One task message as kombu's Redis transport stores it (Celery protocol 2, JSON, base64 body)."""
    task_id = str(uuid.uuid4())
    body = [list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None, "group": None,
        "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": repr(tuple(args)), "kwargsrepr": "{}", "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties = {
        "correlation_id": task_id, "reply_to": str(uuid.uuid4()), "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue}, "priority": broker_priority(priority),
        "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
    }
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
