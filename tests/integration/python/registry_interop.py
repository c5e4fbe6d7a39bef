"""A Kafka client that is not librdkafka, against tally.

Debian's python3-kafka (kafka-python) and python3-avro. Run by
tests/integration/test_python_interop.c as:

    registry_interop.py BOOTSTRAP HTTP_BASE API_KEY OUT_PATH USERS QUANTITY

1. Fetches tally's event schema and its id from tally's own schema registry
   API (GET /subjects/tally.usage-value/versions/latest, basic auth with the
   API key as the password, as Confluent clients send it).
2. Produces one UsageRecorded event of QUANTITY api_calls per user, framed
   as Confluent's serializer frames them (magic byte 0, the id, Avro
   binary), keyed "user:<id>", with kafka-python's own default partitioner
   (murmur2 of the key, as Java's).
3. Reads tally.alerts from the start until every user has at least one
   alert (or 60 s pass), and decodes each record with the writer schema
   fetched from tally's API by the id in the record's framing
   (GET /schemas/ids/{id}, cached per id).
4. Writes one JSON line per alert to OUT_PATH: partition, key, schema id,
   the decoded alert.
"""
import base64
import datetime
import io
import json
import struct
import sys
import time
import urllib.request

import avro.io
import avro.schema
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

REGISTRY_TYPE = "application/vnd.schemaregistry.v1+json"


def millis(value):
    """timestamp-millis fields decode to datetimes: back to milliseconds."""
    return int(value.timestamp() * 1000)


def main():
    bootstrap, http_base, api_key, out_path = sys.argv[1:5]
    users = sys.argv[5].split(",")
    quantity = int(sys.argv[6])
    auth = "Basic " + base64.b64encode(("python:" + api_key).encode()).decode()

    def registry_get(path):
        request = urllib.request.Request(http_base + path)
        request.add_header("Authorization", auth)
        request.add_header("Accept", REGISTRY_TYPE + ", application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            content_type = answer.headers.get("Content-Type", "")
            if not content_type.startswith(REGISTRY_TYPE):
                raise SystemExit("registry answer of type " + content_type)
            return json.load(answer)

    latest = registry_get("/subjects/tally.usage-value/versions/latest")
    event_schema = avro.schema.parse(latest["schema"])
    writer = avro.io.DatumWriter(event_schema)

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    now_ms = int(time.time() * 1000)
    for index, user in enumerate(users):
        datum = {
            "event_id": "python-%d-%d" % (now_ms, index),
            # timestamp-millis: python3-avro takes a datetime
            "occurred_at": datetime.datetime.fromtimestamp(
                now_ms / 1000, tz=datetime.timezone.utc),
            "subject": {"kind": "user", "id": user},
            "body": {
                "feature": "api_calls",
                "quantity": quantity,
                "unit": "",
                "ai": None,
                "properties": {"client": "kafka-python"},
            },
        }
        buffer = io.BytesIO()
        buffer.write(struct.pack(">bI", 0, latest["id"]))
        writer.write(datum, avro.io.BinaryEncoder(buffer))
        producer.send("tally.usage", key=("user:" + user).encode(),
                      value=buffer.getvalue())
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    partitions = consumer.partitions_for_topic("tally.alerts")
    deadline = time.time() + 60
    while not partitions and time.time() < deadline:
        time.sleep(0.2)
        partitions = consumer.partitions_for_topic("tally.alerts")
    assigned = [TopicPartition("tally.alerts", p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)

    readers = {}
    alerted = set()
    lines = []
    while len(alerted) < len(users) and time.time() < deadline:
        for record in consumer:
            magic, schema_id = struct.unpack(">bI", record.value[:5])
            if magic != 0:
                raise SystemExit("alert without Confluent framing")
            if schema_id not in readers:
                fetched = registry_get("/schemas/ids/%d" % schema_id)
                readers[schema_id] = avro.io.DatumReader(
                    avro.schema.parse(fetched["schema"]))
            alert = readers[schema_id].read(
                avro.io.BinaryDecoder(io.BytesIO(record.value[5:])))
            alerted.add(alert["subject"]["id"])
            lines.append({"partition": record.partition,
                          "key": record.key.decode(),
                          "schema_id": schema_id, "alert": alert})
    consumer.close()
    with open(out_path, "w") as out:
        for line in lines:
            out.write(json.dumps(line, sort_keys=True, default=millis) + "\n")
    missing = [user for user in users if user not in alerted]
    if missing:
        raise SystemExit("no alert for " + ",".join(missing))


if __name__ == "__main__":
    main()
