"""The dashboard's Starlette application: GET-only pages over the job table, the object store and the fleet.

Every page is a Jinja2 template with autoescape on for every template; the Content-Security-Policy allows
scripts only from the dashboard itself (``/static/ui.js``), so even text that escaped escaping could not run.
Unknown jobs and files are 404 pages, bad filters 400 pages, and any other exception a 500 page without
details (the traceback goes to the server's log only).
"""
from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import time
from datetime import datetime, timezone
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ..errors import CganError, InvalidInput, NotFound, ServiceRefused, ServiceUnavailable
from ..jobs import JobRecord
from . import queries
from .charts import line_chart

log = logging.getLogger("cganctl.ui")
HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "cgan_ui_token"
INLINE_TYPES = {"image/png", "image/jpeg", "application/json", "text/plain"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CHART_SIZE = {"width": 420, "height": 240}
LIST_REFRESH_S = 10
SWEEP_EVERY_S = 2.0  # embedded: how often pages look for jobs whose process died
JOB_REFRESH_S = 5


# --- template helpers ------------------------------------------------------------------------------------
def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    seconds = ((now or datetime.now(timezone.utc)) - value).total_seconds()
    return _span(max(seconds, 0)) + " ago"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    return _span(((end or datetime.now(timezone.utc)) - start).total_seconds())


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _num(value) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _size(value) -> str:
    if not isinstance(value, int):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def _pretty(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)  # naïve, not na\u00efve


def _metric(name: str, value) -> str:
    """One metric as the CLI says it: accuracies in percent, gains in points, the rest as numbers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if name.endswith("_gain"):
            return f"{100 * value:+.1f} points"
        if "accuracy" in name or name.endswith(("_rate", "augmentation_augmented", "augmentation_baseline")):
            return _pct(value)
    return _num(value)


def _percent_done(job: JobRecord) -> float | None:
    if job.status == "succeeded":
        return 100.0
    if job.progress_total:
        return max(0.0, min(100.0, 100.0 * job.progress_done / job.progress_total))
    return None


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=_ago, ts=_ts, num=_num, pct=_pct, size=_size, pretty=_pretty, duration=_duration, span=_span)
    env.globals.update(metric=_metric)
    env.globals.update(percent_done=_percent_done, relative_name=queries.relative_name)
    return Jinja2Templates(env=env)


# --- the application -------------------------------------------------------------------------------------
class Dashboard:
    """The pages; ``service`` is a :class:`scheduler.service.Service` (the CLI's), created on first use."""

    def __init__(self, service=None, settings=None) -> None:
        self._service = service
        self._settings = settings
        self.templates = make_templates()
        self._swept = float("-inf")

    @property
    def service(self):
        if self._service is None:
            from ..runtime import Runtime
            from ..service import Service

            self._service = Service(Runtime.create(self._settings))
        return self._service

    @property
    def table(self):
        return self.service.table

    @property
    def store(self):
        return self.service.runtime.store

    def sweep(self) -> None:
        """On the embedded default, what the jobs commands do first: fail a job whose process died (else it
        would read "running" here until a CLI command ran); at most once every SWEEP_EVERY_S."""
        now = time.monotonic()
        if self.service.runtime.settings.embedded and now - self._swept >= SWEEP_EVERY_S:
            self._swept = now
            self.service.sweep()

    def render(self, request: Request, name: str, status_code: int = 200, **context) -> Response:
        context.setdefault("refresh", None)
        context.setdefault("nav", "")
        return self.templates.TemplateResponse(request, name, context, status_code=status_code, headers=SECURITY_HEADERS)

    # pages
    def job_list(self, request: Request) -> Response:
        self.sweep()
        query = queries.ListQuery.parse(request.query_params)
        page = queries.list_jobs(self.table, query)
        refresh = None if request.query_params.get("refresh") == "0" else LIST_REFRESH_S
        return self.render(request, "jobs.html", nav="jobs", page=page, query=query, refresh=refresh, now=datetime.now(timezone.utc))

    def job(self, request: Request) -> Response:
        queries.check_parameters(request.query_params, "a job's page", ("step",))
        self.sweep()
        job = queries.job_by_id(self.table, request.path_params["job_id"])
        files = queries.list_files(self.store, job.id)
        context: dict = {"job": job, "files": files, "nav": "jobs", "retries": self.table.retries_of(job.id)}
        if job.kind == "train":
            context.update(self._train_context(request, job, files))
        elif job.kind == "generate":
            context.update(self._generate_context(job))
        metrics = dict(job.metrics or {})
        per_class = metrics.pop("per_class", None)
        context["per_class"] = per_class if isinstance(per_class, dict) and per_class else None
        context["per_class_columns"] = sorted({c for row in (per_class or {}).values() if isinstance(row, dict) for c in row})
        context["metric_scalars"] = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
        context["metric_nested"] = {k: v for k, v in metrics.items() if isinstance(v, (dict, list)) and v}
        refresh_off = request.query_params.get("refresh") == "0"
        context["refresh"] = None if job.finished or refresh_off else JOB_REFRESH_S
        return self.render(request, "job.html", **context)

    def _train_context(self, request: Request, job: JobRecord, files: list[str]) -> dict:
        checkpoints = queries.checkpoints(files)
        with_samples = [c for c in checkpoints if c.samples]
        wanted = request.query_params.get("step")
        shown = with_samples[-1] if with_samples else None
        if wanted is not None:
            match = [c for c in with_samples if str(c.step) == wanted]
            if not match:
                raise queries.BadRequest(f"job {job.id} has no checkpoint with samples at step {wanted!r}")
            shown = match[0]
        history = queries.loss_history(self.store, job.id, checkpoints[-1] if checkpoints else None)
        loss_keys = sorted({k for row in history for k in row if k != "step" and "loss" in k})
        loss_chart = line_chart({k: [(r["step"], r[k]) for r in history if k in r] for k in loss_keys}, width=CHART_SIZE["width"], height=CHART_SIZE["height"])
        scores = queries.scores_by_step(self.table, job)
        score_series = {
            "label accuracy": [(r["step"], r["label_accuracy"]) for r in scores if r["step"] is not None and r["label_accuracy"] is not None],
        }
        fid_series = {
            "Inception FID": [(r["step"], r["inception_fid"]) for r in scores if r["step"] is not None and r["inception_fid"] is not None],
            "classifier FID": [(r["step"], r["classifier_fid"]) for r in scores if r["step"] is not None and r["classifier_fid"] is not None],
        }
        newest = max((r["job"] for r in scores), key=lambda j: j.created_at, default=None)
        eval_per_class = (newest.metrics or {}).get("per_class") if newest else None
        eval_per_class = eval_per_class if isinstance(eval_per_class, dict) and eval_per_class else None
        return {
            "newest_eval": newest,
            "eval_per_class": eval_per_class,
            "eval_per_class_columns": sorted({c for row in (eval_per_class or {}).values() if isinstance(row, dict) for c in row}),
            "checkpoints": checkpoints,
            "with_samples": with_samples,
            "shown": shown,
            "loss_chart": loss_chart,
            "latest_checkpoint": checkpoints[-1] if checkpoints else None,
            "scores": scores,
            "accuracy_chart": line_chart(score_series, width=CHART_SIZE["width"], height=CHART_SIZE["height"], percent=True) if scores else None,
            "fid_chart": line_chart({k: v for k, v in fid_series.items() if v}, width=CHART_SIZE["width"], height=CHART_SIZE["height"]) if scores else None,
            "chain": queries.training_chain(self.table, job),
        }

    def _generate_context(self, job: JobRecord) -> dict:
        artifacts = job.artifacts or {}
        manifest_name = queries.relative_name(job.id, artifacts.get("manifest", ""))
        manifest = queries.read_json(self.store, f"jobs/{job.id}/{manifest_name}") if manifest_name else None
        model_ref = str(job.spec.get("model") or "")
        model = None
        if model_ref:
            from ..model_registry import parse_ref

            try:
                name, version = parse_ref(model_ref)
                model = next((m for m in self._models() if m.name == name and (version is None or m.version == version)), None)
            except CganError:
                model = None
        return {
            "manifest": manifest,
            "manifest_files": len((manifest or {}).get("files") or []),
            "manifest_bytes": sum(f.get("size") or 0 for f in (manifest or {}).get("files") or [] if isinstance(f, dict)),
            "classes": queries.class_counts(job),
            "shard_info": queries.shard_summary(self.table, job.id),
            "model": model,
            "model_ref": model_ref,
        }

    def _models(self):
        from ..model_registry import ModelRegistry

        return ModelRegistry(self.table.engine).all()

    def file(self, request: Request) -> Response:
        queries.check_parameters(request.query_params, "a file")
        job = queries.job_by_id(self.table, request.path_params["job_id"])
        name = request.path_params["name"]
        key = queries.object_key(job.id, name)
        if not self.store.exists(key):  # a folder (local store) or nothing: 404
            raise NotFound(f"no file {name!r} in job {job.id}")
        data = self.store.get_bytes(key)
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers = {"Cache-Control": "private, max-age=60"}
        if media_type not in INLINE_TYPES:
            media_type = "application/octet-stream"
            headers["Content-Disposition"] = f'attachment; filename="{_safe_filename(name)}"'
        return Response(data, media_type=media_type, headers=headers)

    def models(self, request: Request) -> Response:
        queries.check_parameters(request.query_params, "the models page")
        records = self._models()
        scored = queries.evaluations(self.table)
        from ..model_registry import aliased

        alias = aliased(records)
        rows = []
        for m in records:
            evaluations = scored.get(m.ref, [])
            rows.append({"model": m, "evaluation": evaluations[0] if evaluations else None, "evaluations": len(evaluations),
                         "alias": m.ref in alias,  # what the bare name resolves to
                         "test": self._test_accuracy(m) if m.kind == "classifier" else None})
        return self.render(request, "models.html", nav="models", rows=rows, columns=queries.EVAL_COLUMNS)

    def _test_accuracy(self, model) -> float | None:
        """A classifier's accuracy on its dataset's test split: from its model card (shipped) or its train job."""
        shipped = model.meta.get("test_accuracy")
        test = shipped if isinstance(shipped, dict) else None
        if test is None and model.job_id:
            try:
                test = (self.table.get(model.job_id).metrics or {}).get("test")
            except NotFound:
                test = None
        value = test.get("accuracy") if isinstance(test, dict) else None
        return value if isinstance(value, (int, float)) else None

    def datasets(self, request: Request) -> Response:
        queries.check_parameters(request.query_params, "the datasets page")
        from ..datasets import registered

        return self.render(request, "datasets.html", nav="datasets", entries=sorted(registered(self.store), key=lambda e: e.name))

    def fleet(self, request: Request) -> Response:
        queries.check_parameters(request.query_params, "the fleet page")
        from ..health import check_all

        report = check_all(self.service.runtime.settings)
        database_ok = report["services"]["database"]["ok"]  # down: the page says so, not a 500
        running = queries.running_by_worker(self.table) if database_ok else {}
        workers = report.get("workers")
        names = sorted(set(workers or {}) | set(running))
        return self.render(
            request,
            "fleet.html",
            nav="fleet",
            report=report,
            workers=workers,
            worker_names=names,
            running=running,
            depths=self.table.queue_depths() if database_ok else None,
            embedded=self.service.runtime.settings.embedded,
            refresh=None if request.query_params.get("refresh") == "0" else LIST_REFRESH_S,
        )

    def script(self, request: Request) -> Response:
        return Response((HERE / "static" / "ui.js").read_text(), media_type="text/javascript", headers={"Cache-Control": "max-age=300"})

    def icon(self, request: Request) -> Response:
        return Response((HERE / "static" / "favicon.svg").read_text(), media_type="image/svg+xml", headers={"Cache-Control": "max-age=3600"})

    # errors
    def error_page(self, request: Request, status_code: int, title: str, message: str) -> Response:
        return self.render(request, "error.html", status_code=status_code, title=title, message=message)


def _is_disconnect(exc: Exception) -> bool:
    """A database that does not answer (refused, down, dropped): the driver's OperationalError / InterfaceError."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name.rsplit("/", 1)[-1]) or "download"


def create_app(service=None, *, settings=None, token: str | None = None) -> Starlette:
    """The dashboard. ``token``: when given, every request must carry it (header, cookie or ``?token=``)."""
    dash = Dashboard(service, settings)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        titles = {404: "Not found", 405: "Read-only", 400: "Bad request"}
        message = {404: "There is no such page.", 405: "This dashboard is read-only: only GET requests are served."}.get(
            exc.status_code, str(exc.detail)
        )
        return dash.error_page(request, exc.status_code, titles.get(exc.status_code, "Error"), message)

    async def cgan_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NotFound):
            return dash.error_page(request, 404, "Not found", str(exc))
        if isinstance(exc, (queries.BadRequest, InvalidInput)):
            return dash.error_page(request, 400, "Bad request", str(exc))
        if isinstance(exc, ServiceUnavailable | ServiceRefused):
            return dash.error_page(request, 503, "A service is unavailable", str(exc))
        return await server_error(request, exc)

    async def server_error(request: Request, exc: Exception) -> Response:
        if _is_disconnect(exc):
            from ..redact import reason

            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, reason(exc))
            return dash.error_page(request, 503, "A service is unavailable", f"The database did not answer: {reason(exc)}")
        log.error("error on %s %s", request.method, request.url.path, exc_info=exc)
        return dash.error_page(request, 500, "Something went wrong", "The dashboard could not show this page. The details are in the server's log.")

    routes = [
        Route("/", dash.job_list, methods=["GET"], name="jobs"),
        Route("/jobs", dash.job_list, methods=["GET"]),
        Route("/jobs/{job_id}", dash.job, methods=["GET"], name="job"),
        Route("/jobs/{job_id}/files/{name:path}", dash.file, methods=["GET"], name="file"),
        Route("/models", dash.models, methods=["GET"], name="models"),
        Route("/datasets", dash.datasets, methods=["GET"], name="datasets"),
        Route("/fleet", dash.fleet, methods=["GET"], name="fleet"),
        Route("/static/ui.js", dash.script, methods=["GET"], name="script"),
        Route("/favicon.ico", dash.icon, methods=["GET"]),
        Route("/static/favicon.svg", dash.icon, methods=["GET"]),
    ]
    middleware = [Middleware(SecurityHeaders), Middleware(TokenGate, token=token, dash=dash)]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            HTTPException: http_error,  # type: ignore[dict-item]
            CganError: cgan_error,
            queries.BadRequest: cgan_error,
            Exception: server_error,
        },
    )
    app.state.dashboard = dash
    return app


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every response (error pages included)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TokenGate:
    """With a token configured, a request needs it: ``Authorization: Bearer``, the login cookie, or ``?token=``
    (which sets the cookie and redirects to the same page without it in the address)."""

    def __init__(self, app, token: str | None, dash: Dashboard) -> None:
        self.app = app
        self.token = token
        self.dash = dash

    def _matches(self, candidate: str | None) -> bool:
        return bool(candidate and self.token) and hmac.compare_digest(str(candidate).encode(), str(self.token).encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.token:
            return await self.app(scope, receive, send)
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if self._matches(bearer) or self._matches(request.cookies.get(TOKEN_COOKIE)):
            return await self.app(scope, receive, send)
        if self._matches(request.query_params.get("token")):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            from urllib.parse import urlencode

            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
            return await response(scope, receive, send)
        response = self.dash.error_page(
            request,
            401,
            "Token required",
            "This dashboard needs its token (CGAN_UI_TOKEN): open any page with ?token=... once, "
            "or send the header 'Authorization: Bearer ...'.",
        )
        await response(scope, receive, send)
