"""Issue 15: a process in production mode (the default) refuses development keys and missing credentials, naming
each setting; the local stacks, demos and tests run in development mode."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.consent import dev_private_key, public_key_b64
from shared.settings import ROOT, Settings

PRODUCTION_READY = {
    "consent_public_key": public_key_b64(Ed25519PrivateKey.generate().public_key()),
    "pii_hash_key": secrets.token_hex(32), "evoucher_key": secrets.token_hex(32),
    "operator_token": secrets.token_hex(32), "kafka_username": "settlement", "kafka_password": secrets.token_hex(16),
}


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # the suite's own processes carry Kafka credentials and more; these tests are about the defaults
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_development_mode_accepts_the_public_development_keys() -> None:
    assert Settings(mode="development").production_problems() == []
    assert Settings(mode="development").bearer_token() == "dev-only-operator-token"


def test_production_is_the_default_and_names_every_development_setting() -> None:
    problems = Settings().production_problems()
    named = {p.split(":")[0] for p in problems}
    assert named == {"CONSENT_PUBLIC_KEY", "PII_HASH_KEY", "EVOUCHER_KEY", "OPERATOR_TOKEN",
                     "KAFKA_USERNAME/KAFKA_PASSWORD"}
    assert Settings().bearer_token() == ""  # no token: every read endpoint answers 401


def test_production_with_real_secrets_starts() -> None:
    assert Settings(**PRODUCTION_READY).production_problems() == []
    remote = {"kafka_bootstrap_servers": "kafka-1.internal:9092", "kafka_ssl_cafile": "/etc/ssl/kafka-ca.pem",
              "redis_url": "rediss://:secret@redis.internal:6379/0"}  # other machines: TLS and a password
    assert Settings(**PRODUCTION_READY, **remote).production_problems() == []


def test_each_development_secret_alone_is_refused() -> None:
    dev_consent = public_key_b64(dev_private_key().public_key())
    for field, value in (("consent_public_key", dev_consent), ("pii_hash_key", "dev-only-pii-hash-key-change-me"),
                         ("pii_hash_key", "short"), ("operator_token", ""), ("operator_token", " " * 40),
                         ("kafka_password", ""), ("kafka_password", "dev-settlement-password"),
                         ("evoucher_key", PRODUCTION_READY["pii_hash_key"]),
                         ("kafka_bootstrap_servers", "127.0.0.1:9092,kafka-2.internal:9092"),
                         ("redis_url", "redis://redis.internal:6379/0"), ("clock_offset_ms", 3_600_000)):
        problems = Settings(**{**PRODUCTION_READY, field: value}).production_problems()
        assert len(problems) == 1, (field, problems)


def test_a_service_started_in_production_with_a_development_key_exits_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MODE", "CONSENT_PUBLIC_KEY", "PII_HASH_KEY")}
    env.update({k.upper(): str(v) for k, v in PRODUCTION_READY.items() if k != "pii_hash_key"})
    env["PYTHONPATH"] = str(ROOT)
    # nothing listens there: the process must stop before it tries
    env.update({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1/0"})
    done = subprocess.run([sys.executable, "-m", "services.settlement"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refusing to start in production mode" in done.stderr
    assert "PII_HASH_KEY" in done.stderr and "CONSENT_PUBLIC_KEY" not in done.stderr


def test_each_service_needs_only_the_keys_it_uses() -> None:
    # the ID-hash and e-voucher keys stay with settlement; consent is verified by binding and the wallets
    no_pii = {**PRODUCTION_READY, "pii_hash_key": "", "evoucher_key": ""}
    assert Settings(**no_pii).production_problems("wallet-32") == []
    assert Settings(**no_pii).production_problems("binding") == []
    assert len(Settings(**no_pii).production_problems("settlement")) == 3  # both keys, and "the same secret"
    assert Settings(**{**PRODUCTION_READY, "consent_public_key": ""}).production_problems("settlement") == []
    assert len(Settings(**{**PRODUCTION_READY, "consent_public_key": ""}).production_problems("binding")) == 1
    # the HTTP gateway holds no key of its own: only its Kafka credentials (institutions' keys are hashes)
    bare = {**no_pii, "consent_public_key": "", "operator_token": ""}
    assert Settings(**bare).production_problems("gateway") == []
    assert Settings(**{**bare, "kafka_password": ""}).production_problems("gateway") != []
