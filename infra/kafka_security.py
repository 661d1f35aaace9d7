"""Who may do what on the broker: one SASL/SCRAM-SHA-512 principal per service, one for hospitals, one for the
enrolment platform, one for the national app, one for operators, and `admin` (the stack's own tooling). The
ACLs are generated from the topic registry (contracts/registry.py), never listed by hand: a principal writes
the topics it produces, reads the topics it consumes (with its own consumer groups) and writes the dead-letter
topics of what it consumes. Operators read everything, write the topics that have dead letters (replay) and
describe the services' consumer groups (lag).

Passwords are random per durable stack (`new_credentials`), kept in the stack's folder (mode 0600) and given to
each process in its environment (KAFKA_USERNAME / KAFKA_PASSWORD); they reach the broker through the Admin API
on stdin (`apply`), never on a command line — except admin's, once, when `kafka-storage format` creates the
stack. `rotate` changes one on the running broker.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from contracts.registry import TOPICS
from contracts.topics import dlq

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "infra" / "kafka" / "KafkaSecurity.java"
ADMIN = "admin"
OPERATOR = "operator"
MECHANISM = "SCRAM-SHA-512"


class SecurityError(RuntimeError):
    """The broker's ACLs or passwords could not be applied; the message says what the broker answered."""


def principals() -> list[str]:
    names = {ADMIN, OPERATOR}
    for t in TOPICS.values():
        names.update(t.producers)
        names.update(t.consumers)
    return sorted(names)


def principal_of(process: str) -> str:
    """Whom a process of the stack authenticates as: itself, except the operator console (an operators' tool)."""
    return OPERATOR if process == "console" else process


def service_principals() -> set[str]:
    """The processes of this repository (they park what they cannot process in the topic's DLQ)."""
    return {n for n in principals() if n in ("binding", "settlement") or n.startswith("wallet-")}


def new_credentials() -> dict[str, str]:
    """Random passwords for a stack that keeps data (`make up`). Hex: SCRAM's format arguments and JAAS strings
    need no quoting."""
    return {name: secrets.token_hex(20) for name in principals()}


def throwaway_credentials() -> dict[str, str]:
    """Fixed passwords for the tests' throw-away stacks on loopback: every such stack of a test session accepts
    the same tooling credentials, so a test may start a second stack and keep its clients."""
    return {name: f"dev-{name}-password" for name in principals()}


def acl_lines() -> list[str]:
    """`acl <resource type> <pattern> <name> User:<principal> <operation>` for KafkaSecurity.java."""
    lines: set[str] = set()

    def allow(kind: str, pattern: str, name: str, principal: str, *operations: str) -> None:
        lines.update(f"acl {kind} {pattern} {name} User:{principal} {op}" for op in operations)

    for t in TOPICS.values():
        for producer in t.producers:
            allow("TOPIC", "LITERAL", t.topic, producer, "WRITE", "DESCRIBE")
        for consumer in t.consumers:
            allow("TOPIC", "LITERAL", t.topic, consumer, "READ", "DESCRIBE")
            allow("GROUP", "PREFIXED", f"{consumer}.", consumer, "READ", "DESCRIBE")
            if consumer in service_principals():
                allow("TOPIC", "LITERAL", dlq(t.topic), consumer, "WRITE", "DESCRIBE")
                # operators see how far behind each service's groups are (the console's lag); describe, not join
                allow("GROUP", "PREFIXED", f"{consumer}.", OPERATOR, "DESCRIBE")
        allow("TOPIC", "LITERAL", t.topic, OPERATOR, "READ", "DESCRIBE")
        if set(t.consumers) & service_principals():  # its DLQ exists: operators read it and replay into the topic
            allow("TOPIC", "LITERAL", t.topic, OPERATOR, "WRITE")
            allow("TOPIC", "LITERAL", dlq(t.topic), OPERATOR, "READ", "DESCRIBE")
    allow("GROUP", "PREFIXED", f"{OPERATOR}.", OPERATOR, "READ", "DESCRIBE")
    return sorted(lines)


def format_arguments(credentials: dict[str, str], everyone: bool = False) -> list[str]:
    """kafka-storage format arguments that create principals before the broker first starts (KRaft keeps SCRAM
    credentials in its metadata log; the broker's own inter-broker login needs `admin` from the start). The
    others are set through the Admin API once it runs (`apply`), so their passwords never appear on a command
    line; `everyone`: the compose stack, whose passwords are the public development ones."""
    args: list[str] = []
    for name, password in sorted(credentials.items()):
        if everyone or name == ADMIN:
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
    return args


def broker_properties(credentials: dict[str, str], listener_names: list[str]) -> list[str]:
    """Broker settings for SASL on every client listener (SCRAM) and on the controller listener (PLAIN, whose
    single user lives in the JAAS line: SCRAM credentials are metadata the controller serves, not uses)."""
    admin = credentials[ADMIN]
    scram_login = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                   f'username="{ADMIN}" password="{admin}";')
    plain_login = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                   f'username="{ADMIN}" password="{admin}" user_{ADMIN}="{admin}";')
    props = [
        f"sasl.enabled.mechanisms={MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={plain_login}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{ADMIN}",
        "allow.everyone.if.no.acl.found=false",
    ]
    props += [f"listener.name.{n.lower()}.{MECHANISM.lower()}.sasl.jaas.config={scram_login}" for n in listener_names]
    return props


def write_private(path: Path, text: str) -> None:
    """A file only its owner may read, from its first byte (passwords, JAAS lines, service environments)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
        f.write(text)


def save(path: Path, credentials: dict[str, str]) -> None:
    write_private(path, json.dumps(credentials, indent=1, sort_keys=True))


def load(path: Path) -> dict[str, str]:
    found: dict[str, str] = json.loads(path.read_text())
    return found


def _run(bootstrap: str, credentials: dict[str, str], instructions: list[str], kafka_lib: Path) -> str:
    java = shutil.which("java") or "java"
    done = subprocess.run([java, "-cp", f"{kafka_lib}/*", str(PROGRAM), bootstrap, ADMIN],
                          input="\n".join([credentials[ADMIN], *instructions]) + "\n", capture_output=True,
                          text=True, timeout=180, check=False)
    if done.returncode != 0:
        raise SecurityError(f"KafkaSecurity failed: {done.stdout[-1500:]} {done.stderr[-2500:]}")
    return done.stdout.strip()


def apply(bootstrap: str, credentials: dict[str, str], kafka_lib: Path) -> str:
    """Every principal's password and every ACL (again on each start: both are idempotent)."""
    passwords = [f"password {name} {pw}" for name, pw in sorted(credentials.items()) if name != ADMIN]
    return _run(bootstrap, credentials, [*passwords, *acl_lines()], kafka_lib)


def rotate(bootstrap: str, credentials: dict[str, str], user: str, kafka_lib: Path) -> str:
    """A new password for `user` on the broker; returns it. Connections already open stay authenticated; each
    process picks the new password up from its environment when it is restarted."""
    password = secrets.token_hex(20)
    _run(bootstrap, credentials, [f"password {user} {password}"], kafka_lib)
    return password


def client_env(credentials: dict[str, str], principal: str) -> dict[str, str]:
    return {"KAFKA_USERNAME": principal, "KAFKA_PASSWORD": credentials[principal]}
