"""Settings from the environment (pydantic-settings). One class for all services; each reads what it needs."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.consent import dev_private_key, public_key_b64

ROOT = Path(__file__).resolve().parent.parent


# Development defaults: public in this repository, so a production process refuses every one of them.
DEV_PII_HASH_KEY = "dev-only-pii-hash-key-change-me"
DEV_EVOUCHER_KEY = "dev-only-evoucher-key-change-me"
DEV_OPERATOR_TOKEN = "dev-only-operator-token"
MIN_SECRET_CHARS = 32  # a keyed hash over ~10^9 plausible ID numbers needs a key nobody can guess
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    # production (the default): refuses to start on a development key or without credentials (see
    # `production_problems`). development: the local stacks, the demo and the tests, which use the public
    # development keys below.
    mode: Literal["production", "development"] = "production"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # SASL/SCRAM-SHA-512 principal of this process on the broker (empty: no authentication; development only)
    kafka_username: str = ""
    kafka_password: str = ""
    # CA file that signed the brokers' certificates: set, clients speak SASL_SSL (TLS); unset, SASL_PLAINTEXT,
    # which production accepts only for brokers on this machine
    kafka_ssl_cafile: str = ""
    # Operators' bearer token for the read endpoints (/balance, /audit, /bindings, …); /health and /metrics
    # stay open. Empty in development = DEV_OPERATOR_TOKEN.
    operator_token: str = ""
    # Topic shape when a service creates the topics it needs (an existing topic is left as it is): 1 / 1 on a
    # single broker, 3 / 2 on the three-broker cluster (a write survives one broker down; two down stop writes).
    kafka_replication_factor: int = Field(default=1, ge=1, le=5)
    kafka_min_insync_replicas: int = Field(default=1, ge=1, le=5)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Wallet deployments: which province this process serves (2-digit GB/T 2260 code).
    province: str = Field(default="32", pattern=r"^\d{2}$")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=0, ge=0, le=65535, description="0 = no HTTP endpoint")
    policies_path: Path = ROOT / "policies" / "regions.yaml"
    institutions_path: Path = ROOT / "policies" / "institutions.yaml"
    # Base64 raw Ed25519 public key of the platform identity service that signs consent proofs (B8).
    # Empty = the development key in shared/consent.py (local stacks only; never in production).
    consent_public_key: str = ""
    # Key for hashing resident ID numbers (settlement identity view). Local default is for development only.
    pii_hash_key: str = DEV_PII_HASH_KEY
    # Per-person views of settlement and binding written compact (shared/compact.py; both forms are read). false:
    # written as JSON objects, which releases before the compact form also read: for a rolling upgrade from such
    # a release (until no old instance runs) and before rolling back to one.
    compact_views: bool = True
    # Key the identity service binds e-voucher codes (医保电子凭证, S4) to their person with. Development only.
    evoucher_key: str = DEV_EVOUCHER_KEY
    # Settlement waits this long for the wallet before answering the hospital and reversing (see settlement docs).
    wallet_timeout_ms: int = Field(default=8000, ge=100, le=120_000)
    # The HTTP gateway's wait for an answer; beyond it the HIS hears "outcome unknown" (query again or reverse).
    gateway_wait_ms: int = Field(default=15_000, ge=100, le=120_000)
    # Tests and demos may shift the business clock (ms); production leaves it 0.
    clock_offset_ms: int = 0
    # Tests and demos only: a file holding a clock offset in ms, re-read while running (shared/clock.py).
    clock_file: str = ""
    # The operator console: where the services' HTTP endpoints are ({"settlement": "http://…", "wallet-32": …})
    # and how often it runs every province's conservation audit (the overview shows the last result).
    service_urls: dict[str, str] = {}
    console_audit_interval_s: int = Field(default=300, ge=10, le=86_400)
    log_level: str = "INFO"
    consumer_max_records: int = Field(default=500, ge=1, le=5000)


    def bearer_token(self) -> str:
        """The token read endpoints require (never empty: development falls back to the public one)."""
        return self.operator_token or (DEV_OPERATOR_TOKEN if self.mode == "development" else "")

    def production_problems(self, service: str = "") -> list[str]:
        """Why this configuration must not run in production mode, one line per setting (empty: fine). `service`:
        only the keys that service uses are required (the ID-hash key stays with settlement); "" requires all."""
        if self.mode != "production":
            return []
        problems = []
        verifies_consent = service in ("", "binding") or service.startswith("wallet")  # they check consent proofs
        hashes_ids = service in ("", "settlement")
        if verifies_consent and self.consent_public_key in ("", public_key_b64(dev_private_key().public_key())):
            problems.append("CONSENT_PUBLIC_KEY: unset or the development key, whose private half is in the "
                            "repository (anyone could forge consent); set the platform identity service's key")
        secrets = [] if service == "gateway" else [("OPERATOR_TOKEN", self.operator_token, DEV_OPERATOR_TOKEN)]
        if hashes_ids:
            secrets += [("PII_HASH_KEY", self.pii_hash_key, DEV_PII_HASH_KEY),
                        ("EVOUCHER_KEY", self.evoucher_key, DEV_EVOUCHER_KEY)]
        for name, value, dev in secrets:
            if value == dev or len(value.strip()) < MIN_SECRET_CHARS or value.startswith("dev-"):
                problems.append(f"{name}: unset, a development value or shorter than {MIN_SECRET_CHARS} "
                                "characters; set a random secret")
        if hashes_ids and self.pii_hash_key == self.evoucher_key:
            problems.append("PII_HASH_KEY/EVOUCHER_KEY: the same secret for two purposes; set two")
        if not self.kafka_username or not self.kafka_password:
            problems.append("KAFKA_USERNAME/KAFKA_PASSWORD: no Kafka credentials; every production client "
                            "authenticates (SASL/SCRAM-SHA-512)")
        elif self.kafka_password.startswith("dev-") or len(self.kafka_password.strip()) < MIN_SECRET_CHARS:
            problems.append(f"KAFKA_PASSWORD: a development password or shorter than {MIN_SECRET_CHARS} "
                            "characters")
        brokers = [b.rsplit(":", 1)[0] for b in self.kafka_bootstrap_servers.split(",")]
        if not self.kafka_ssl_cafile and not all(host in LOOPBACK for host in brokers):
            problems.append("KAFKA_SSL_CAFILE: brokers on other machines need TLS (SASL_SSL); set the CA that "
                            "signed their certificates")
        redis = urlsplit(self.redis_url)
        if redis.hostname not in LOOPBACK and (not redis.password or redis.scheme != "rediss"):
            problems.append("REDIS_URL: a Redis on another machine needs a password and TLS (rediss://)")
        if self.clock_offset_ms or self.clock_file:
            problems.append("CLOCK_OFFSET_MS/CLOCK_FILE: shifting business time is for tests and demos")
        return problems


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def operator_headers() -> dict[str, str]:
    """What an operator's tool (CLI, demo, simulator, tests) sends to the read endpoints: OPERATOR_TOKEN from
    the environment, or the development token the local stacks accept."""
    return {"Authorization": f"Bearer {os.environ.get('OPERATOR_TOKEN') or DEV_OPERATOR_TOKEN}"}
