"""What the dashboard reads: the job table (through SQLAlchemy, like :class:`scheduler.jobs.JobTable`) and the
object store. Read-only: nothing here writes.

The job list is paged by keyset (``created_at``, ``id``), newest first, so the 10,000th job costs what the
first does; ``bench/ui_list.py`` measures the page.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter, defaultdict

from sqlalchemy import and_, func, or_, select

from ..db import Job
from ..errors import NotFound
from ..jobs import JobRecord, JobTable
from ..specs import JobKind, JobStatus

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
JOB_ID = re.compile(r"^[0-9a-f]{4,32}$")
STEP_DIR = re.compile(r"^step-(\d+)$")


class BadRequest(ValueError):
    """A filter or paging parameter the dashboard cannot use; shown as a 400 page with this message."""


# every page reads `refresh` (refresh=0: no auto-refresh) and `token` (the access check's); each its own besides
COMMON_PARAMETERS = ("refresh", "token")


def check_parameters(params, page: str, reads: tuple[str, ...] = (), hint: str = "") -> None:
    """400 for a parameter ``page`` does not read (a typo would otherwise be ignored and show the wrong page)
    or one given more than once (which value would win is not for a reader of the address to guess)."""
    allowed = tuple(reads) + COMMON_PARAMETERS
    unknown = sorted(set(params.keys()) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}: {page} reads {', '.join(allowed)}{hint}")
    repeated = sorted(k for k in set(params.keys()) if len(params.getlist(k)) > 1)
    if repeated:
        raise BadRequest(f"parameter {repeated[0]!r} given {len(params.getlist(repeated[0]))} times: give it once")


@dataclasses.dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    kind: str | None = None
    limit: int = PAGE_SIZE
    after: str | None = None  # id of the last row of the previous page: show older jobs
    before: str | None = None  # id of the first row of the next page: show newer jobs

    # what the list reads besides COMMON_PARAMETERS: its filters and its keyset cursors
    PARAMETERS = ("status", "kind", "limit", "after", "before")

    @classmethod
    def parse(cls, params) -> "ListQuery":
        hint = "; the list pages with its Older and Newer links (after=JOB, before=JOB)" if "page" in params else ""
        check_parameters(params, "the list", cls.PARAMETERS, hint)
        status = params.get("status") or None
        kind = params.get("kind") or None
        if status is not None and status not in JobStatus.__members__:
            raise BadRequest(f"unknown status {status!r}; choose one of {', '.join(JobStatus.__members__)}")
        if kind is not None and kind not in JobKind.__members__:
            raise BadRequest(f"unknown kind {kind!r}; choose one of {', '.join(JobKind.__members__)}")
        raw_limit = params.get("limit") or str(PAGE_SIZE)
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}, not {raw_limit!r}")
        after, before = params.get("after") or None, params.get("before") or None
        for name, value in (("after", after), ("before", before)):
            if value is not None and not JOB_ID.match(value):
                raise BadRequest(f"{name} must be a job id, not {value!r}")
        if after and before:
            raise BadRequest("give either after or before, not both")
        return cls(status, kind, int(raw_limit), after, before)

    def link(self, **changes) -> str:
        """The query string of this list with some parameters changed (None drops one)."""
        from urllib.parse import urlencode

        values = {"status": self.status, "kind": self.kind, "limit": self.limit if self.limit != PAGE_SIZE else None}
        values.update(changes)
        query = urlencode({k: v for k, v in values.items() if v is not None})
        return f"?{query}" if query else "?"


@dataclasses.dataclass
class JobPage:
    jobs: list[JobRecord]
    newer: str | None  # `before` cursor of the newer page, when there is one
    older: str | None  # `after` cursor of the older page, when there is one
    matching: int  # jobs that pass the filters
    by_status: dict[str, int]  # jobs per status (kind filter applied), for the filter bar


def list_jobs(table: JobTable, query: ListQuery) -> JobPage:
    filters = []
    if query.status:
        filters.append(Job.status == query.status)
    if query.kind:
        filters.append(Job.kind == query.kind)
    with table._session() as session:
        cursor_id = query.after or query.before
        select_rows = select(Job).where(*filters)
        if cursor_id:
            created = session.scalar(select(Job.created_at).where(Job.id == cursor_id))
            if created is None:
                raise BadRequest(f"no job {cursor_id!r} to page from")
            if query.after:
                select_rows = select_rows.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < cursor_id)))
            else:
                select_rows = select_rows.where(or_(Job.created_at > created, and_(Job.created_at == created, Job.id > cursor_id)))
        if query.before:
            order = (Job.created_at.asc(), Job.id.asc())
        else:
            order = (Job.created_at.desc(), Job.id.desc())
        rows = list(session.scalars(select_rows.order_by(*order).limit(query.limit + 1)))
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        if query.before:
            rows.reverse()
        jobs = [JobRecord.from_row(r) for r in rows]
        status_query = select(Job.status, func.count()).group_by(Job.status)
        if query.kind:
            status_query = status_query.where(Job.kind == query.kind)
        by_status = {s: 0 for s in JobStatus.__members__}
        by_status.update({status: count for status, count in session.execute(status_query)})
    matching = by_status[query.status] if query.status else sum(by_status.values())
    if query.before:
        newer = jobs[0].id if more and jobs else None
        older = jobs[-1].id if jobs else None
    else:
        newer = jobs[0].id if cursor_id and jobs else None
        older = jobs[-1].id if more and jobs else None
    return JobPage(jobs, newer, older, matching, by_status)


def job_by_id(table: JobTable, job_id: str) -> JobRecord:
    """A job by id or unique prefix; anything that is not one is :class:`NotFound` (a 404 page)."""
    if not JOB_ID.match(job_id):
        raise NotFound(f"no job {job_id!r}")
    return table.get(job_id)


# --- object store --------------------------------------------------------------------------------------
def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def object_key(job_id: str, name: str) -> str:
    """The store key of ``name`` inside a job's prefix, or :class:`NotFound` for anything outside it."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise NotFound(f"no file {name!r} in job {job_id}")
    return job_prefix(job_id) + name


def relative_name(job_id: str, key: str) -> str | None:
    """``key`` relative to the job's prefix (for a download link), or None when it lies outside."""
    prefix = job_prefix(job_id)
    if isinstance(key, str) and key.startswith(prefix) and len(key) > len(prefix):
        return key[len(prefix):]
    return None


def list_files(store, job_id: str) -> list[str]:
    return [k[len(job_prefix(job_id)):] for k in store.list(job_prefix(job_id))]


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    step: int
    prefix: str  # relative to the job prefix, e.g. checkpoints/step-0000020
    files: tuple[str, ...]

    @property
    def samples(self) -> str | None:
        return f"{self.prefix}/samples.png" if "samples.png" in self.files else None

    @property
    def loss(self) -> str | None:
        return f"{self.prefix}/loss.png" if "loss.png" in self.files else None


def checkpoints(files: list[str]) -> list[Checkpoint]:
    """The checkpoint folders among a train job's files (``checkpoints/step-NNNNNNN/...``), oldest first."""
    found: dict[int, tuple[str, list[str]]] = {}
    for name in files:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "checkpoints" and (m := STEP_DIR.match(parts[1])):
            found.setdefault(int(m.group(1)), (f"checkpoints/{parts[1]}", []))[1].append(parts[2])
    return [Checkpoint(step, prefix, tuple(sorted(names))) for step, (prefix, names) in sorted(found.items())]


def read_json(store, key: str) -> dict | None:
    try:
        value = json.loads(store.get_bytes(key))
    except (NotFound, ValueError):
        return None
    return value if isinstance(value, dict) else None


def loss_history(store, job_id: str, checkpoint: Checkpoint | None) -> list[dict]:
    """The losses a trainer kept in its latest checkpoint's ``state.json`` (GAN: step, D and G loss)."""
    if checkpoint is None or "state.json" not in checkpoint.files:
        return []
    state = read_json(store, f"{job_prefix(job_id)}{checkpoint.prefix}/state.json") or {}
    rows = []
    for entry in state.get("loss_history") or []:
        if isinstance(entry, list) and len(entry) == 3:
            rows.append({"step": entry[0], "d_loss": entry[1], "g_loss": entry[2]})
    for entry in state.get("history") or []:  # classifier: a dict per log interval
        if isinstance(entry, dict) and "step" in entry:
            rows.append({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    return rows


# --- models and evaluations -------------------------------------------------------------------------------
EVAL_COLUMNS = ("label_accuracy", "inception_fid", "classifier_fid", "classifier_intra_fid_mean")


def evaluations(table: JobTable, limit: int = 2000) -> dict[str, list[JobRecord]]:
    """Succeeded evaluate jobs by the model they scored (``NAME:VERSION``), newest first."""
    by_model: dict[str, list[JobRecord]] = defaultdict(list)
    for job in table.list(kind=JobKind.evaluate.value, status=JobStatus.succeeded.value, limit=limit):
        by_model[str(job.spec.get("model"))].append(job)
    return by_model


def training_chain(table: JobTable, job: JobRecord) -> list[JobRecord]:
    """A train job and the jobs it resumed from (``resume_from``), oldest first."""
    chain, seen = [job], {job.id}
    while (parent := chain[-1].spec.get("resume_from")) and parent not in seen and len(chain) < 50:
        try:
            chain.append(table.get(parent))
        except NotFound:
            break
        seen.add(parent)
    return list(reversed(chain))


def scores_by_step(table: JobTable, job: JobRecord) -> list[dict]:
    """Evaluate jobs that scored a model trained by this job (or a job it resumed from), by training step."""
    chain_ids = {j.id for j in training_chain(table, job)}
    from ..model_registry import ModelRegistry

    models = [m for m in ModelRegistry(table.engine).registered() if m.job_id in chain_ids]
    if not models:
        return []
    scored = evaluations(table)
    rows = []
    for model in models:
        for ev in scored.get(model.ref, []):
            metrics = ev.metrics or {}
            rows.append(
                {
                    "step": model.meta.get("steps"),
                    "model": model.ref,
                    "job": ev,
                    **{c: metrics.get(c) for c in EVAL_COLUMNS},
                    "samples_per_class": (metrics.get("protocol") or {}).get("samples_per_class"),
                }
            )
    return sorted(rows, key=lambda r: (r["step"] or 0, r["job"].created_at))


# --- fleet -----------------------------------------------------------------------------------------------
def running_by_worker(table: JobTable) -> dict[str, list[tuple[JobRecord, int | None]]]:
    """What each worker runs, from the job table: (job, shard index or None) per worker.

    A generate job's shards run on several workers at once, so those come from the running shard rows.
    """
    from ..db import Shard

    by_worker: dict[str, list[tuple[JobRecord, int | None]]] = defaultdict(list)
    running = {j.id: j for j in table.list(status=JobStatus.running.value, limit=1000)}
    with table._session() as session:
        shards = session.execute(
            select(Shard.job_id, Shard.index, Shard.worker).where(Shard.status == "running", Shard.job_id.in_(list(running)))
        ).all()
    sharded = set()
    for job_id, index, worker in shards:
        sharded.add(job_id)
        by_worker[worker or "?"].append((running[job_id], index))
    for job in running.values():
        if job.id not in sharded:
            by_worker[job.worker or "?"].append((job, None))
    return dict(sorted(by_worker.items()))


def class_counts(job: JobRecord) -> list[dict]:
    """A generate job's classes: asked for (spec), written (metrics), and acceptance where filtered."""
    asked = job.spec.get("counts") or {}
    metrics = job.metrics or {}
    written = metrics.get("count_per_class") or {}
    acceptance = metrics.get("acceptance") or {}
    names = list(asked) + [n for n in written if n not in asked]
    return [
        {"name": n, "asked": asked.get(n), "written": written.get(n), "acceptance": acceptance.get(n)}
        for n in names
    ]


def shard_summary(table: JobTable, job_id: str) -> dict:
    shards = table.shards(job_id)
    return {
        "shards": shards,
        "states": dict(Counter(s.status for s in shards)),
        "workers": dict(Counter(s.worker for s in shards if s.worker)),
    }
