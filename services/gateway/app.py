"""HTTP gateway: the national HTTP interface for institutions whose HIS already speaks it.

`POST /fsi/api/rsfComIfsService/callService` takes the national request envelope exactly as a HIS sends it,
publishes the bytes unchanged to his.settlement.requests.v1 and answers with the national reply when settlement
publishes it on his.settlement.results.v1. It is the same contract, not a second implementation: the gateway
checks only what it needs to route and whom it serves (JSON, the institution's key, a msgid that is the
institution's); everything else is settlement's to decide and answer.

- Bounded wait (GATEWAY_WAIT_MS): without an answer by then the HIS gets HTTP 504 and a body (no infcode) saying
  the outcome is unknown: send the same msgid again to get its answer, or reverse it with 2601. It never says
  "failed" for a request that may yet be settled.
- The same msgid answers identically: a repeated POST is published again and settlement answers a repeat with
  its stored reply.
- Who is calling: the envelope's `fixmedins_code` must be a designated institution (H1) whose registry entry
  holds the SHA-256 of the key sent in `X-Institution-Key`; otherwise HTTP 401 and nothing is published. In
  development mode an institution without a registered key is let through (the local stacks and tests).
- Bounded in-flight requests (MAX_IN_FLIGHT) and body size (MAX_BODY_BYTES); OpenAPI at /openapi.json and
  /docs. Each instance reads every result (no consumer group), so instances scale behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter, make_asgi_app

from contracts.his import NATIONAL_PATH, HisEnvelope, HisRequestError, HisResult, check_sender, parse_his_json
from contracts.topics import HIS_REQUESTS, HIS_RESULTS
from shared.clock import china_time, clock_from
from shared.kafka import kafka_auth
from shared.pii import kafka_key
from shared.policy import Institutions
from shared.service import configure, lifespan_of
from shared.settings import Settings

SERVICE = "gateway"
MAX_IN_FLIGHT = 1_000  # requests waiting for their answer (≤ 1 GB of bodies); more get 503 (the HIS retries)
MAX_BODY_BYTES = 1_000_000  # what one Kafka message carries (a 2301 upload of 5,000 rows fits)
log = structlog.get_logger()
ANSWERS = Counter("gateway_answers", "HTTP answers by outcome", ["outcome"])


def outcome_unknown(msgid: str, infno: str, why: str) -> dict[str, Any]:
    """Not a national reply, on purpose: no infcode, because -1 would tell the HIS "failed, nothing charged" of
    a request that may yet settle. HTTP 504 and `outcome` say what is known."""
    return {"outcome": "unknown", "msgid": msgid, "infno": infno,
            "err_msg": f"outcome unknown: {why}; send the same msgid again to get its answer, or reverse it with "
                       "2601 (it is answered exactly once)"}


def national_error(msgid: str, infno: str, err: str, now: datetime) -> dict[str, Any]:
    """A national reply the gateway itself gives: the request was not published, so it failed (infcode -1)."""
    now = china_time(now)
    return {"infcode": -1, "err_msg": err, "warn_msg": None, "msgid": msgid, "infno": infno, "inf_refmsgid": None,
            "refmsg_time": None, "respond_time": f"{now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d}", "output": {}}


class Gateway:
    """Requests out, answers in: each waiting HTTP request holds a future for its msgid."""

    def __init__(self, settings: Settings) -> None:
        self.clock = clock_from(settings.clock_offset_ms, settings.clock_file)  # the services' business clock
        self.settings = settings
        self.institutions = Institutions.load(settings.institutions_path)
        self.wait_s = settings.gateway_wait_ms / 1000
        # (msgid, fixmedins_code) → the HTTP calls waiting for its answer
        self.waiting: dict[tuple[str, str], list[asyncio.Future[dict[str, Any]]]] = defaultdict(list)
        self.in_flight = 0
        self.reader: asyncio.Task[None] | None = None
        self.ready = False

    async def start(self) -> None:
        """Connect (in the event loop, as aiokafka wants): produce requests, read every result from now on."""
        settings = self.settings
        auth = kafka_auth(settings.kafka_username, settings.kafka_password, settings.kafka_ssl_cafile)
        bootstrap = settings.kafka_bootstrap_servers.split(",")
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                         client_id=SERVICE, **auth)
        self.consumer = AIOKafkaConsumer(HIS_RESULTS, bootstrap_servers=bootstrap, group_id=None,
                                         auto_offset_reset="latest", enable_auto_commit=False, client_id=SERVICE,
                                         **auth)
        await self.producer.start()
        await self.consumer.start()
        await self.consumer.seek_to_end()  # positioned before the first request is published
        self.reader = asyncio.create_task(self.read())
        self.reader.add_done_callback(lambda _: setattr(self, "ready", False))  # answers stopped: unhealthy
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        await self.consumer.stop()
        await self.producer.stop()

    async def read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=500, max_records=1_000)
            if not self.waiting:
                continue  # most results answer hospitals on Kafka: read, never parsed, while no HTTP call waits
            for records in batch.values():
                for record in records:
                    with contextlib.suppress(ValueError):
                        self.answer(orjson.loads(record.value or b""))

    def answer(self, reply: Any) -> None:
        """Hand a reply to whoever waits for its msgid, of the institution it answers (a reply naming none, from
        an older settlement, goes to every waiter of the msgid). One lookup per reply, however many wait."""
        if not isinstance(reply, dict) or not isinstance(msgid := reply.get("msgid"), str):
            return
        institution = reply.get("fixmedins_code")
        if not isinstance(institution, str | None):
            return  # not a reply of ours: nobody waits for it
        if institution is None:
            waiters = [w for w in self.waiting if w[0] == msgid]
        else:
            waiters = [(msgid, institution)] if (msgid, institution) in self.waiting else []
        for waiter in waiters:
            for future in self.waiting[waiter]:
                if not future.done():
                    future.set_result(reply)

    def refusal(self, obj: dict[str, Any], key: str | None) -> str | None:
        """Why this caller may not send for the institution the envelope names (None: it may)."""
        code = obj.get("fixmedins_code")
        institution = self.institutions.find(code) if isinstance(code, str) else None
        if institution is None:
            return f"fixmedins_code: {code!r} is not a designated institution in the registry (H1)"
        try:  # H3 before anything is published: a reply to another institution's msgid never reaches its waiter
            check_sender(str(obj.get("msgid")), institution.code, any_msgid=institution.msgid == "any")
        except HisRequestError as exc:
            return str(exc)
        if institution.key_sha256 is None:
            return None if self.settings.mode == "development" else (
                f"X-Institution-Key: no gateway key is registered for {institution.code}; ask the centre for one")
        offered = hashlib.sha256((key or "").encode()).hexdigest()
        if not hmac.compare_digest(offered, institution.key_sha256):
            return f"X-Institution-Key: missing or not the key of {institution.code}"
        return None

    async def call(self, raw: bytes, key: str | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, national reply) for one request body sent with institution key `key`."""
        try:
            obj = parse_his_json(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, national_error("", "", f"body: not JSON ({exc})", self.clock.now())
        msgid = obj.get("msgid") if isinstance(obj, dict) else None
        if not isinstance(msgid, str) or not 0 < len(msgid) <= 64:
            return 400, national_error("", "", "msgid: missing; every request carries the national msgid",
                                   self.clock.now())
        infno = str(obj.get("infno", ""))
        refused = self.refusal(obj, key)
        if refused is not None:
            return 401, national_error(msgid, infno, refused, self.clock.now())
        if self.in_flight >= MAX_IN_FLIGHT:
            return 503, national_error(msgid, infno, "gateway busy: send the same msgid again shortly",
                                       self.clock.now())
        data = obj.get("input", {}).get("data") if isinstance(obj.get("input"), dict) else None
        visit = data.get("mdtrt_id") if isinstance(data, dict) and isinstance(data.get("mdtrt_id"), str) else msgid
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiter = (msgid, str(obj["fixmedins_code"]))
        self.waiting[waiter].append(future)
        self.in_flight += 1

        async def publish_and_wait() -> dict[str, Any]:
            await self.producer.send_and_wait(HIS_REQUESTS, raw, key=kafka_key(str(visit)))
            return await future

        try:  # one bound for both: a producer stuck on Kafka counts against the same wait
            return 200, await asyncio.wait_for(publish_and_wait(), self.wait_s)
        except (TimeoutError, KafkaError) as exc:  # it may have been published: the outcome is not known
            why = f"no answer within {self.wait_s:g} s" if isinstance(exc, TimeoutError) else f"Kafka: {exc!r}"
            log.warning("outcome unknown", msgid=msgid, infno=infno, why=why)
            return 504, outcome_unknown(msgid, infno, why)
        finally:
            self.in_flight -= 1
            waiting = self.waiting[waiter]
            waiting.remove(future)
            if not waiting:
                del self.waiting[waiter]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure(settings, SERVICE)
    gateway = Gateway(settings)
    app = FastAPI(title="Family mutual aid: national interface gateway", version="1",
                  lifespan=lifespan_of(gateway.start, gateway.stop),
                  description=__doc__)
    request_schema = HisEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    reply = {"content": {"application/json": {"schema": HisResult.model_json_schema(
        ref_template="#/components/schemas/{model}")}}}

    @app.post(NATIONAL_PATH, summary="Any national transaction (infno in the envelope)", responses={
        200: {"description": "settlement's answer (infcode 0 or -1)", **reply},
        400: {"description": "not JSON, or no msgid: nothing was published", **reply},
        401: {"description": "not a designated institution, or not its X-Institution-Key: nothing was published",
              **reply},
        503: {"description": "too many requests in flight: nothing was published", **reply},
        504: {"description": "outcome unknown (no infcode, on purpose): send the same msgid again, or reverse "
                             "with 2601"}},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": request_schema, "example": EXAMPLE}}},
            "parameters": [{"name": "X-Institution-Key", "in": "header", "required": False,
                            "description": "the institution's gateway key (required in production)",
                            "schema": {"type": "string"}}]})
    async def call_service(request: Request) -> Response:
        raw = await bounded_body(request)
        if raw is None:
            status, body = 413, national_error("", "", f"body: larger than {MAX_BODY_BYTES} bytes", gateway.clock.now())
        else:
            status, body = await gateway.call(raw, request.headers.get("x-institution-key"))
        ANSWERS.labels(outcome=str(status)).inc()
        return JSONResponse(body, status_code=status)

    @app.get("/health", status_code=204, include_in_schema=False)
    async def health() -> Response:
        return Response(status_code=204 if gateway.ready else 503)

    app.mount("/metrics", make_asgi_app())
    return app


EXAMPLE = {
    "infno": "2207", "msgid": "H32050500002202611231015300001", "mdtrtarea_admvs": "320500",
    "insuplc_admdvs": "320500", "fixmedins_code": "H32050500002", "inf_time": "2026-11-23 10:15:30",
    "opter": "D0042", "sign_no": "null",
    "input": {"data": {"psn_no": "32A1B2C3D4E5F6A7B8", "mdtrt_cert_type": "03", "mdtrt_cert_no": "C3205000001",
                       "mdtrt_id": "M20261123000001", "medfee_sumamt": 228.50, "fund_pay_sumamt": 100.00,
                       "psn_part_amt": 128.50, "acct_used_flag": "1", "med_type": "11", "insutype": "310"}},
}


async def bounded_body(request: Request) -> bytes | None:
    """The body, or None once it passes MAX_BODY_BYTES (read no further: an oversized POST is never buffered)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
