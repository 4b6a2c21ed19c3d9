#!/usr/bin/env python3
"""An independent consumer for the Kafka sink's tests: kafka-python (pure
Python, no librdkafka) and zstandard, installed by
scripts/install-kafka-python.sh into /opt/virtpulse-test/kafka-python.

    kafka_consume.py --bootstrap HOST:PORT --topic T --group G
                     [--expect N] [--count-event FAMILY.NAME ...]
                     [--deadline SECONDS] [--settle SECONDS] [--headers]

Joins consumer group G on topic T, starts every assigned partition from its
beginning (whatever the group committed), and prints one JSON line per
message:

    {"partition": 0, "offset": 12, "key": "<uuid>", "timestamp_ms": ...,
     "id": "<event id>", "event": "domain.lifecycle", "kind": "event",
     "domain": "<name>", "seq": 7, "value_sha256": "..."}

`id` is the CloudEvents `ce_id` header, else `virtpulse_event_id`, else
the JSON value's event.id (null when none: metric records). It reads until
N distinct ids were seen among the counted messages (every message with an
id, or only those whose `virtpulse_event` header is one of --count-event),
then keeps reading for --settle seconds (duplicates that follow), or until
--deadline. The last line is a summary:

    {"summary": true, "messages": M, "distinct": D, "rereads": R,
     "reason": "count"|"deadline"}

Each message (partition, offset) is printed once: a rebalance makes the
group start a partition over, and offsets read before are skipped (R).

Exit status 0 in both cases (the caller judges), 2 on bad arguments.
"""
import argparse
import hashlib
import json
import sys
import time

import zstandard  # noqa: F401  (kafka-python decompresses zstd batches with it)
from kafka import ConsumerRebalanceListener, KafkaConsumer


def header(headers, name):
    for k, v in headers or []:
        if k == name and v is not None:
            return v.decode("utf-8", "replace")
    return None


class FromBeginning(ConsumerRebalanceListener):
    def __init__(self):
        self.consumer = None

    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        if assigned:
            self.consumer.seek_to_beginning(*assigned)


def describe(m, with_headers):
    try:
        value = json.loads(m.value) if m.value else None
    except ValueError:
        value = None
    event = value.get("event") if isinstance(value, dict) else None
    domain = value.get("domain") if isinstance(value, dict) else None
    msg_id = header(m.headers, "ce_id") or header(m.headers, "virtpulse_event_id")
    if msg_id is None and isinstance(event, dict):
        msg_id = event.get("id")
    out = {
        "partition": m.partition,
        "offset": m.offset,
        "key": m.key.decode("utf-8", "replace") if m.key is not None else None,
        "timestamp_ms": m.timestamp,
        "id": msg_id,
        "event": header(m.headers, "virtpulse_event"),
        "kind": header(m.headers, "virtpulse_kind"),
        "domain": domain.get("name") if isinstance(domain, dict) else None,
        "seq": event.get("seq") if isinstance(event, dict) else None,
        "value_sha256": hashlib.sha256(m.value or b"").hexdigest(),
    }
    if with_headers:
        out["headers"] = {k: (v.decode("utf-8", "replace") if v is not None else None) for k, v in m.headers or []}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--expect", type=int, default=0, help="distinct ids to wait for (0: read until the deadline)")
    ap.add_argument("--count-event", action="append", default=[], help="only these virtpulse_event values count")
    ap.add_argument("--deadline", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=0.0, help="seconds to keep reading once N ids were seen")
    ap.add_argument("--headers", action="store_true", help="print every header too")
    a = ap.parse_args()

    end = time.monotonic() + a.deadline
    listener = FromBeginning()
    consumer = KafkaConsumer(
        bootstrap_servers=a.bootstrap,
        group_id=a.group,
        client_id="virtpulse-tests-kafka-python",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
        # The spool replays in big batches; fetch in big slices too.
        fetch_max_bytes=16 * 1048576,
        max_partition_fetch_bytes=8 * 1048576,
    )
    listener.consumer = consumer
    consumer.subscribe(topics=[a.topic], listener=listener)

    counted = set(a.count_event)
    ids = set()
    messages = 0
    # A rebalance assigns partitions again and they start over from the
    # beginning: offsets already read are skipped (and counted), so that
    # what is printed is what the topic holds, each message once.
    read = set()
    rereads = 0
    reached_at = None
    reason = "deadline"
    out = sys.stdout
    while True:
        now = time.monotonic()
        if reached_at is not None and now >= reached_at + a.settle:
            reason = "count"
            break
        if now >= end:
            reason = "count" if reached_at is not None else "deadline"
            break
        batches = consumer.poll(timeout_ms=200)
        for records in batches.values():
            for m in records:
                if (m.partition, m.offset) in read:
                    rereads += 1
                    continue
                read.add((m.partition, m.offset))
                d = describe(m, a.headers)
                messages += 1
                if d["id"] is not None and (not counted or d["event"] in counted):
                    ids.add(d["id"])
                out.write(json.dumps(d, separators=(",", ":")) + "\n")
        out.flush()
        if reached_at is None and a.expect > 0 and len(ids) >= a.expect:
            reached_at = time.monotonic()
    summary = {"summary": True, "messages": messages, "distinct": len(ids), "rereads": rereads, "reason": reason}
    out.write(json.dumps(summary) + "\n")
    out.flush()
    try:
        consumer.close(autocommit=False)
    except Exception:  # noqa: BLE001 (a broker already gone: nothing to leave)
        pass


if __name__ == "__main__":
    main()
