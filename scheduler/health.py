"""`cganctl status`: does each service answer, and which workers are alive on which queues."""
from __future__ import annotations

from .errors import CganError
from .settings import get_settings


def _probe(func) -> dict:
    from .redact import scrub

    try:
        return {"ok": True, "detail": scrub(func())}
    except CganError as exc:  # exit_code: 2 for an invalid setting, 3 for a service that did not answer
        return {"ok": False, "detail": scrub(str(exc)), "exit_code": exc.exit_code}
    except Exception as exc:  # a status probe reports, it never crashes
        return {"ok": False, "detail": scrub(f"{type(exc).__name__}: {exc}")}


def check_all(settings=None) -> dict:
    """What `cganctl status` (and the dashboard's fleet page) shows; ``settings`` default to the environment's."""
    from . import db
    from .dispatch import make_dispatcher
    from .runtime import Runtime
    from .settings import redact_url

    settings = settings or get_settings()
    runtime = Runtime.create(settings)

    def database() -> str:
        current, head = db.current_revision(settings), db.head_revision(settings)
        state = "at head" if current == head else f"at {current or 'no schema'}, head is {head}: run `cganctl db upgrade`"
        if current is None and settings.sqlalchemy_url.startswith("sqlite"):
            state = "no schema yet: the first command that needs it creates it"
        if current != head and not settings.sqlalchemy_url.startswith("sqlite"):
            raise CganError(f"{redact_url(settings.sqlalchemy_url)} {state}")
        return f"{redact_url(settings.sqlalchemy_url)} ({state})"

    services = {
        "broker": _probe(lambda: make_dispatcher(runtime).check()),
        "database": _probe(database),
        "object store": _probe(lambda: answer_within(runtime.store.check)),  # a frozen S3 must not hang status
    }
    report: dict = {"services": services, "embedded": settings.embedded, "workers": None, "unserved": {}, "silent": [], "expired": []}
    if settings.embedded:
        if services["database"]["ok"] and "no schema" not in services["database"]["detail"]:
            from .reconcile import embedded_pass

            try:  # what the jobs commands do first: a job whose process died is failed, and said so here
                report["abandoned"] = embedded_pass(runtime)
            except Exception:  # status reports, it never crashes
                pass
        return report
    if services["broker"]["ok"]:
        try:
            report["workers"] = live_workers(settings)
        except Exception as exc:  # it answered the PING but not the broadcast: workers unknown, not a crash
            from .redact import reason

            services["broker"] = {"ok": False, "detail": f"answered, but listing its workers failed: {reason(exc)}", "exit_code": 3}
    if services["database"]["ok"]:
        try:
            if report["workers"] is not None:
                report["unserved"] = unserved_queues(runtime, report["workers"])
            report["expired"] = runtime.table.expired_leases()
            gone = {row["worker"] for row in report["expired"]}  # named on work whose lease ran out: not busy, gone
            report["silent"] = [name for name in silent_workers(runtime, report["workers"] or {}) if name not in gone]
        except Exception:  # e.g. a table without its schema yet: status reports, it never crashes
            pass
    return report


PREFLIGHT_WAIT_S = 15.0  # a service that neither answers nor refuses within this is "not answering": a warning


def answer_within(check, seconds: float = PREFLIGHT_WAIT_S):
    """``check()``'s result, or its exception, or ServiceUnavailable once ``seconds`` pass without either (a
    service that accepts connections and never answers must not hold a worker's start-up)."""
    return in_background(check)(seconds)


def in_background(check):
    """Start ``check()`` in a daemon thread now; returns ``wait(seconds)``, which gives its result, or raises its
    exception, or ServiceUnavailable once ``seconds`` have passed since the start (checks started together
    overlap their waits)."""
    import threading
    import time

    from .errors import ServiceUnavailable

    box: dict = {}

    def run() -> None:
        try:
            box["value"] = check()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="preflight", daemon=True)
    started = time.monotonic()
    thread.start()

    def wait(seconds: float):
        thread.join(max(started + seconds - time.monotonic(), 0.0))
        if thread.is_alive():
            raise ServiceUnavailable(f"no answer within {seconds:.0f} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    return wait


def worker_preflight(settings) -> list[str]:
    """What a worker checks before it consumes a message. What would fail every task it takes stops it (raised:
    a data folder it cannot make, a database or object store that refuses its credentials, a job table not at
    head); a service that does not answer now is only a warning (it may come back, and tasks wait for it)."""
    from . import db
    from .errors import ServiceRefused, ServiceUnavailable
    from .redact import redact_url
    from .store import open_store

    settings.make_folder(settings.data_dir)
    warnings = []
    shown_db = redact_url(settings.sqlalchemy_url)
    try:
        current = answer_within(lambda: db.current_revision(settings))
    except ServiceRefused:
        raise
    except ServiceUnavailable as exc:
        warnings.append(str(exc) if shown_db in str(exc) else f"database {shown_db}: {exc}")
    else:
        if current != db.head_revision(settings):
            if not settings.sqlalchemy_url.startswith("sqlite"):
                raise ServiceUnavailable(
                    f"the job table at {shown_db} is at {current or 'no schema'}, not at "
                    f"{db.head_revision(settings)}: run `cganctl db upgrade` before starting workers"
                )
            db.require_schema(settings)
    try:
        answer_within(lambda: open_store(settings).check())
    except ServiceRefused:
        raise
    except ServiceUnavailable as exc:
        warnings.append(str(exc) if "S3" in str(exc) or "store" in str(exc) else f"object store: {exc}")
    return warnings


def unserved_queues(runtime, workers: dict) -> dict[str, int]:
    """Queues with queued jobs that no live worker consumes, and how many jobs wait on each.

    ``workers``: those that answered (``live_workers``). A ``--pool solo`` worker does not answer while it
    runs a task, so a queue with a running job counts as served too (a busy fleet is not an idle one)."""
    depths = runtime.table.queue_depths()
    served = {q for w in workers.values() for q in w["queues"]} | {q for q, d in depths.items() if d["running"]}
    return {q: d["queued"] for q, d in depths.items() if d["queued"] and q not in served}


def silent_workers(runtime, workers: dict) -> list[str]:
    """Workers that run a job (job table) but did not answer: busy ``--pool solo`` workers, whose queues are unknown."""
    return sorted(runtime.table.running_workers() - set(workers))


def live_workers(settings) -> dict:
    """The workers that answer a broadcast within 1.5 s: name -> {queues, active (tasks running)}.

    The two broadcasts wait out their 1.5 s side by side (each on its own app and connection), so
    asking takes about 2 s rather than 4."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.celery_app import make_app

    def ask(what: str) -> dict:
        return getattr(make_app(settings).control.inspect(timeout=1.5), what)() or {}

    for attempt in (1, 2):
        try:
            with ThreadPoolExecutor(2) as pool:
                queues, active = pool.map(ask, ("active_queues", "active"))
            break
        except Exception:  # a pooled connection that a broker restart closed: once more, on a new one
            if attempt == 2:
                raise
    return {name: {"queues": sorted(q["name"] for q in qs), "active": len(active.get(name, []))} for name, qs in queues.items()}
