"""One hop of the raw relay that sets the bench's ceiling: consume a batch → parse each message → produce all →
await → commit. The same Kafka settings and batch shape as the services, with no Redis and no logic, so
`settlements/s ÷ relay messages/s` says how much of the transport the services use.

    python -m bench.relay <bootstrap> <in_topic> <out_topic>
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.kafka import kafka_auth

MAX_RECORDS = 500  # as the services' consumers


async def relay(bootstrap: str, source: str, sink: str) -> None:
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"relay.{source}",
                                enable_auto_commit=False, auto_offset_reset="earliest", **kafka_auth())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                **kafka_auth())
    await consumer.start()
    await producer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=50, max_records=MAX_RECORDS)
            futures = []
            for records in batch.values():
                for r in records:
                    json.loads(r.value)  # a service parses every message
                    futures.append(await producer.send(sink, r.value, key=r.key))
            await asyncio.gather(*futures)
            if futures:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(relay(*sys.argv[1:4]))
