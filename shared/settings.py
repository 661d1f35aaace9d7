"""Settings from the environment (pydantic-settings). One class for all services; each reads what it needs."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Wallet deployments: which province this process serves (2-digit GB/T 2260 code).
    province: str = Field(default="32", pattern=r"^\d{2}$")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=0, ge=0, le=65535, description="0 = no HTTP endpoint")
    policies_path: Path = ROOT / "policies" / "regions.yaml"
    # Base64 raw Ed25519 public key of the platform identity service that signs consent proofs (B8).
    # Empty = the development key in shared/consent.py (local stacks only; never in production).
    consent_public_key: str = ""
    # Key for hashing resident ID numbers (settlement identity view). Local default is for development only.
    pii_hash_key: str = "dev-only-pii-hash-key-change-me"
    # Key the identity service binds e-voucher codes (医保电子凭证, S4) to their person with. Development only.
    evoucher_key: str = "dev-only-evoucher-key-change-me"
    # Settlement waits this long for the wallet before answering the hospital and reversing (see settlement docs).
    wallet_timeout_ms: int = Field(default=8000, ge=100, le=120_000)
    # Tests and demos may shift the business clock (ms); production leaves it 0.
    clock_offset_ms: int = 0
    # Tests and demos only: a file holding a clock offset in ms, re-read while running (shared/clock.py).
    clock_file: str = ""
    log_level: str = "INFO"
    consumer_max_records: int = Field(default=500, ge=1, le=5000)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
