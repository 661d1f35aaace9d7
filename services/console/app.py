"""The operator console: server-rendered pages over the running stack, behind the operators' bearer token.

Pages: overview (services up, consumer lag, dead letters, last audit per province, throughput and latency of the
last ten minutes), a person, a settlement (by msgid or setl_id), held transfers, dead letters with replay,
card-misuse flags and clearing statements. Everything it serves is local (no CDN, no script from elsewhere): the
pages work on a machine without internet, and the only script is none — charts are SVG drawn on the server.

Sign-in: the operator types the token the read endpoints require (OPERATOR_TOKEN); the console keeps a session
for SESSION_TTL_S in a cookie that scripts cannot read (HttpOnly) and other sites cannot send (SameSite=Strict).
Every form that changes something (replay, audit, sign-out) also carries a token derived from the session.
Sessions live in the process: a restart signs everyone out. Scripts may send `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import make_asgi_app

from contracts.topics import DEPLOYED_PROVINCES
from services.console.sources import SAMPLE_INTERVAL_S, Sources, consumer_groups
from shared.clock import china_time, clock_from
from shared.redis_store import connect
from shared.service import configure, lifespan_of
from shared.settings import Settings

SERVICE = "console"
HERE = Path(__file__).parent
COOKIE = "mutualaid_console"
SESSION_TTL_S = 8 * 3600  # a working day
MAX_SESSIONS = 1_000  # the oldest session goes when more sign in


def yuan(fen: Any) -> str:
    """Fen as yuan with two decimals (¥1,234.56); anything else as it is."""
    if not isinstance(fen, int) or isinstance(fen, bool):
        return "" if fen is None else str(fen)
    return f"{'-' if fen < 0 else ''}¥{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def china_ms(ms: Any) -> str:
    """Epoch ms as China time (what operators and institutions read)."""
    if not isinstance(ms, int | float) or not ms:
        return ""
    return f"{china_time(datetime.fromtimestamp(ms / 1000, UTC)):%Y-%m-%d %H:%M:%S}"


def china_iso(text: Any) -> str:
    """An ISO time (as the services store them, UTC) as China time."""
    try:
        return f"{china_time(datetime.fromisoformat(str(text))):%Y-%m-%d %H:%M:%S}"
    except ValueError:
        return str(text or "")


def stamp17(text: Any) -> str:
    """A national 17-digit time as 2026-11-24 10:15:30.123."""
    t = str(text or "")
    return f"{t[:4]}-{t[4:6]}-{t[6:8]} {t[8:10]}:{t[10:12]}:{t[12:14]}.{t[14:17]}" if len(t) == 17 else t


class Sessions:
    """Signed-in operators: session id → expiry (monotonic), bounded and expiring."""

    def __init__(self) -> None:
        self.live: OrderedDict[str, float] = OrderedDict()
        self.key = secrets.token_bytes(32)  # derives each session's form token

    def open(self) -> str:
        sid = secrets.token_urlsafe(32)
        self.live[sid] = time.monotonic() + SESSION_TTL_S
        while len(self.live) > MAX_SESSIONS:
            self.live.popitem(last=False)
        return sid

    def valid(self, sid: str | None) -> bool:
        expiry = self.live.get(sid or "")
        if expiry is None or expiry < time.monotonic():
            self.live.pop(sid or "", None)
            return False
        return True

    def close(self, sid: str | None) -> None:
        self.live.pop(sid or "", None)

    def form_token(self, sid: str) -> str:
        return hmac.new(self.key, sid.encode(), hashlib.sha256).hexdigest()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure(settings, SERVICE)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per sample otherwise
    clock = clock_from(settings.clock_offset_ms, settings.clock_file)
    sources = Sources(settings, clock, connect(settings.redis_url))
    sessions = Sessions()
    expected = f"Bearer {settings.bearer_token()}".encode()
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(yuan=yuan, china_ms=china_ms, china_iso=china_iso, stamp17=stamp17)

    app = FastAPI(title="Family mutual aid: operator console", lifespan=lifespan_of(sources.start, sources.stop),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.mount("/metrics", make_asgi_app())

    def signed_in(request: Request) -> str | None:
        """'session' or 'bearer' when the caller is an operator, else None."""
        if hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return "bearer"
        return "session" if sessions.valid(request.cookies.get(COOKIE)) else None

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        sid = request.cookies.get(COOKIE) or ""
        return templates.TemplateResponse(request, name, {
            "csrf": sessions.form_token(sid), "now": china_time(clock.now()), **context}, status_code=status)

    def to_login(request: Request) -> Response:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    def form_ok(request: Request, csrf: str) -> bool:
        if request.headers.get("authorization"):
            return signed_in(request) == "bearer"
        sid = request.cookies.get(COOKIE)
        return sessions.valid(sid) and hmac.compare_digest(csrf.encode(), sessions.form_token(sid or "").encode())

    @app.get("/health", status_code=204, include_in_schema=False)
    async def health() -> Response:
        return Response(status_code=204)

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", next=next if next.startswith("/") else "/", error="")

    @app.post("/login")
    async def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:
        if not hmac.compare_digest(f"Bearer {token}".encode(), expected):
            return page(request, "login.html", 401, next=next, error="That token is not the operators' token.")
        response = RedirectResponse(next if next.startswith("/") and not next.startswith("//") else "/", 303)
        response.set_cookie(COOKIE, sessions.open(), max_age=SESSION_TTL_S, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/logout")
    async def logout(request: Request, csrf: str = Form("")) -> Response:
        if form_ok(request, csrf):
            sessions.close(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request) -> Response:
        if not signed_in(request):
            return to_login(request)
        try:
            _, dlq_counts = await sources.dead_letters(rows_too=False)
            dlq_error = ""
        except Exception as exc:  # Kafka away: the rest of the page still shows
            dlq_counts, dlq_error = {}, f"Kafka: {exc.__class__.__name__}"
        status, clearing = await sources.get("settlement", "/clearing")
        return page(request, "overview.html", health=await sources.health(), lag=sources.lag,
                    lag_error=sources.lag_error, groups=consumer_groups(), dlq_counts=dlq_counts,
                    dlq_error=dlq_error, audit=sources.audit, chart=chart_svg(sources.chart()),
                    clearing=clearing if status == 200 else None)

    @app.post("/audit")
    async def audit_now(request: Request, csrf: str = Form("")) -> Response:
        if not form_ok(request, csrf):
            return Response("operator sign-in required", status_code=401)
        await sources.run_audit()
        return RedirectResponse("/", 303)

    @app.get("/person", response_class=HTMLResponse)
    async def person(request: Request, psn_no: str = "", province: str = "") -> Response:
        if not signed_in(request):
            return to_login(request)
        context: dict[str, Any] = {"psn_no": psn_no, "province": province, "provinces": DEPLOYED_PROVINCES}
        if psn_no:
            prov = province or (psn_no[:2] if psn_no[:2] in DEPLOYED_PROVINCES else "")
            b_status, bindings = await sources.get("binding", "/bindings", psn_no=psn_no)
            w_status, balance = await sources.get(f"wallet-{prov}", "/balance", psn_no=psn_no)
            context.update(province=prov, bindings=bindings if b_status == 200 else None,
                           balance=balance if w_status == 200 else None,
                           errors=[e for s, e in ((b_status, bindings), (w_status, balance)) if s != 200])
        return page(request, "person.html", **context)

    @app.get("/settlement", response_class=HTMLResponse)
    async def settlement(request: Request, q: str = "") -> Response:
        if not signed_in(request):
            return to_login(request)
        record = None
        if q:
            status, found = await sources.get("settlement", "/settlement", msgid=q)
            if status == 404:
                status, found = await sources.get("settlement", "/settlement", setl_id=q)
            record = found if status == 200 else None
        return page(request, "settlement.html", q=q, record=record, searched=bool(q))

    @app.get("/transfers", response_class=HTMLResponse)
    async def transfers(request: Request) -> Response:
        if not signed_in(request):
            return to_login(request)
        held = {}
        for province in DEPLOYED_PROVINCES:
            status, found = await sources.get(f"wallet-{province}", "/transfers")
            held[province] = found if status == 200 else {"error": found}
        return page(request, "transfers.html", held=held, now_ms=clock.now().timestamp() * 1000)

    @app.get("/dlq", response_class=HTMLResponse)
    async def dead_letters(request: Request, done: str = "", error: str = "") -> Response:
        if not signed_in(request):
            return to_login(request)
        try:
            rows, counts = await sources.dead_letters()
        except Exception as exc:  # Kafka away: said on the page
            rows, counts, error = [], {}, error or f"Kafka: {exc.__class__.__name__}: {exc}"[:300]
        return page(request, "dlq.html", rows=rows, counts=counts, replayed=await sources.replayed(), done=done,
                    error=error)

    @app.post("/dlq/replay")
    async def replay(request: Request, dlq: str = Form(...), partition: int = Form(...), offset: int = Form(...),
                     csrf: str = Form("")) -> Response:
        if not form_ok(request, csrf):
            return Response("operator sign-in required", status_code=401)
        try:
            original = await sources.replay(dlq, partition, offset, who=signed_in(request) or "")
        except Exception as exc:  # ReplayError, or Kafka away: said on the page, nothing marked replayed
            return RedirectResponse("/dlq?" + urlencode({"error": f"{exc.__class__.__name__}: {exc}"[:300]}), 303)
        return RedirectResponse("/dlq?" + urlencode({"done": original}), 303)

    @app.get("/flags", response_class=HTMLResponse)
    async def flags(request: Request) -> Response:
        if not signed_in(request):
            return to_login(request)
        status, found = await sources.get("settlement", "/flags", limit=500)
        return page(request, "flags.html", flags=found if status == 200 else [],
                    error="" if status == 200 else found)

    @app.get("/clearing", response_class=HTMLResponse)
    async def clearing(request: Request, period: str = "") -> Response:
        if not signed_in(request):
            return to_login(request)
        key = "month" if len(period) == 7 else "day"
        status, found = await sources.get("settlement", "/clearing", **({key: period} if period else {}))
        return page(request, "clearing.html", period=period, statement=found if status == 200 else None,
                    error="" if status == 200 else found)

    return app


def chart_svg(points: list[dict[str, float]], width: int = 640, height: int = 160) -> dict[str, Any]:
    """Polylines for the overview: answers per second and batch p99 (ms), each scaled to its own maximum."""
    if len(points) < 2:
        return {"empty": True, "width": width, "height": height}
    finite = [p["p99_ms"] for p in points if p["p99_ms"] != float("inf")]
    top_rate = max(max(p["per_s"] for p in points), 1.0)
    top_ms = max(max(finite, default=1.0), 1.0)
    step = width / (len(points) - 1)

    def line(values: list[float], top: float) -> str:
        return " ".join(f"{i * step:.1f},{height - min(v, top) / top * (height - 10):.1f}"
                        for i, v in enumerate(values))

    return {"empty": False, "width": width, "height": height, "top_rate": top_rate, "top_ms": top_ms,
            "rate": line([p["per_s"] for p in points], top_rate),
            "p99": line([min(p["p99_ms"], top_ms) for p in points], top_ms),
            "last": points[-1], "points": len(points), "span": span_text(len(points) * SAMPLE_INTERVAL_S)}


def span_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"
