"""The Schema Registry (takhin broker --schema-registry-listen) as Confluent's clients use it:
plain HTTP for the error codes, confluent-kafka's SchemaRegistryClient for the API, its
Avro and JSON serializers for records through the broker, and kill -9 for durability."""
import json
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from kafkahelp import unique

CT = "application/vnd.schemaregistry.v1+json"
USER_V1 = {"type": "record", "name": "User", "fields": [{"name": "name", "type": "string"}]}
USER_V2 = {"type": "record", "name": "User", "fields": [
    {"name": "name", "type": "string"}, {"name": "age", "type": "int", "default": 0}]}
USER_BAD = {"type": "record", "name": "User", "fields": [
    {"name": "name", "type": "string"}, {"name": "email", "type": "string"}]}


def url_of(broker) -> str:
    return f"http://127.0.0.1:{broker.registry_port}"


def call(broker, method, path, body=None, content_type=CT, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url_of(broker) + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_ready(broker, deadline_s=30.0):
    end = time.time() + deadline_s
    while True:
        try:
            status, _ = call(broker, "GET", "/subjects")
            if status == 200:
                return
        except OSError as error:
            last = error
        else:
            last = status
        assert time.time() < end, f"schema registry never answered: {last}\n{broker.log_tail()}"
        time.sleep(0.1)


def register(broker, subject, schema, **extra):
    return call(broker, "POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema), **extra})


def test_rest_api_codes_and_compatibility(broker):
    wait_ready(broker)
    s = unique("users") + "-value"
    status, first = register(broker, s, USER_V1)
    assert status == 200 and first["id"] >= 1, first
    # Reformatted, same schema: same id, no new version.
    status, again = call(broker, "POST", f"/subjects/{s}/versions",
                         {"schema": json.dumps(USER_V1, indent=2, sort_keys=True)})
    assert (status, again["id"]) == (200, first["id"])
    assert call(broker, "GET", f"/subjects/{s}/versions") == (200, [1])

    status, bad = register(broker, s, USER_BAD)
    assert status == 409 and bad["error_code"] == 409, bad
    status, verdict = call(broker, "POST", f"/compatibility/subjects/{s}/versions/latest?verbose=true",
                           {"schema": json.dumps(USER_BAD)})
    assert status == 200 and verdict["is_compatible"] is False and verdict["messages"], verdict
    status, ok = call(broker, "POST", f"/compatibility/subjects/{s}/versions/latest",
                      {"schema": json.dumps(USER_V2)})
    assert ok == {"is_compatible": True}
    status, second = register(broker, s, USER_V2)
    assert status == 200 and second["id"] != first["id"]

    status, latest = call(broker, "GET", f"/subjects/{s}/versions/latest")
    assert (latest["version"], latest["id"]) == (2, second["id"])
    status, by_id = call(broker, "GET", f"/schemas/ids/{first['id']}")
    assert json.loads(by_id["schema"]) == json.loads(json.dumps(USER_V1, sort_keys=True))
    assert call(broker, "GET", f"/schemas/ids/{first['id']}/versions")[1] == [{"subject": s, "version": 1}]
    status, found = call(broker, "POST", f"/subjects/{s}", {"schema": json.dumps(USER_V1)})
    assert (status, found["version"]) == (200, 1)
    assert "AVRO" in call(broker, "GET", "/schemas/types")[1]

    # Config and mode, with their error codes.
    assert call(broker, "GET", f"/config/{s}")[1]["error_code"] == 40408
    assert call(broker, "GET", f"/config/{s}?defaultToGlobal=true")[1] == {"compatibilityLevel": "BACKWARD"}
    assert call(broker, "PUT", f"/config/{s}", {"compatibility": "NONE"}) == (200, {"compatibility": "NONE"})
    assert call(broker, "PUT", f"/config/{s}", {"compatibility": "SIDEWAYS"})[1]["error_code"] == 42203
    assert call(broker, "PUT", f"/mode/{s}", {"mode": "SLEEPY"})[1]["error_code"] == 42204
    assert call(broker, "PUT", f"/mode/{s}", {"mode": "READONLY"})[0] == 200
    assert register(broker, s, USER_BAD)[1]["error_code"] == 42205
    assert call(broker, "DELETE", f"/mode/{s}")[0] == 200

    # Bad input changes nothing.
    assert call(broker, "GET", "/subjects/nope/versions")[1]["error_code"] == 40401
    assert call(broker, "GET", f"/subjects/{s}/versions/9")[1]["error_code"] == 40402
    assert call(broker, "GET", f"/subjects/{s}/versions/zero")[1]["error_code"] == 42202
    assert call(broker, "GET", "/schemas/ids/99999")[1]["error_code"] == 40403
    assert register(broker, s, {"type": "record", "name": "X"})[1]["error_code"] == 42201
    assert call(broker, "POST", f"/subjects/{s}/versions", raw=b"{not json")[0] == 422
    assert call(broker, "POST", f"/subjects/{s}/versions", {"schema": "\"int\""}, content_type="text/plain")[0] == 415
    assert call(broker, "GET", f"/subjects/{s}/versions") == (200, [1, 2])

    # Soft, then permanent deletes.
    assert call(broker, "DELETE", f"/subjects/{s}?permanent=true")[1]["error_code"] == 40405
    assert call(broker, "DELETE", f"/subjects/{s}") == (200, [1, 2])
    assert call(broker, "GET", f"/subjects/{s}/versions")[1]["error_code"] == 40401
    assert s in call(broker, "GET", "/subjects?deletedOnly=true")[1]
    assert call(broker, "DELETE", f"/subjects/{s}")[1]["error_code"] == 40404
    assert call(broker, "DELETE", f"/subjects/{s}?permanent=true") == (200, [1, 2])
    assert s not in call(broker, "GET", "/subjects?deleted=true")[1]


def test_client_registers_and_serializers_round_trip_through_the_broker(broker):
    wait_ready(broker)
    client = SchemaRegistryClient({"url": url_of(broker)})
    topic = unique("sr-avro")
    subject = f"{topic}-value"
    schema_id = client.register_schema(subject, Schema(json.dumps(USER_V1), "AVRO"))
    assert client.get_schema(schema_id).schema_type == "AVRO"
    assert client.get_latest_version(subject).version == 1
    assert client.test_compatibility(subject, Schema(json.dumps(USER_V2), "AVRO"))
    assert not client.test_compatibility(subject, Schema(json.dumps(USER_BAD), "AVRO"))
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(json.dumps(USER_BAD), "AVRO"))
    assert refused.value.http_status_code == 409
    client.set_compatibility(subject, "FULL")
    assert client.get_compatibility(subject) == "FULL"

    avro_out = AvroSerializer(client, json.dumps(USER_V2))
    avro_in = AvroDeserializer(client)
    json_schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    json_topic = unique("sr-json")
    json_out = JSONSerializer(json.dumps(json_schema), client)
    json_in = JSONDeserializer(json.dumps(json_schema))
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(5):
        producer.produce(topic, avro_out({"name": f"u{i}", "age": i},
                                         SerializationContext(topic, MessageField.VALUE)))
        producer.produce(json_topic, json_out({"n": i}, SerializationContext(json_topic, MessageField.VALUE)))
    assert producer.flush(30) == 0
    for name, decode, expect in [
        (topic, avro_in, [{"name": f"u{i}", "age": i} for i in range(5)]),
        (json_topic, json_in, [{"n": i} for i in range(5)]),
    ]:
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique("g"),
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([name])
        got, end = [], time.time() + 30
        while len(got) < 5 and time.time() < end:
            m = consumer.poll(1.0)
            if m is not None and m.error() is None:
                got.append(decode(m.value(), SerializationContext(name, MessageField.VALUE)))
        consumer.close()
        assert got == expect
    # The registry's own topic is an ordinary compacted topic on the broker.
    assert "_schemas" in Producer({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics

    client.delete_subject(subject)
    client.delete_subject(subject, permanent=True)
    assert subject not in client.get_subjects()


def test_state_survives_kill_9_and_ids_are_never_reused(broker):
    wait_ready(broker)
    kept, gone = unique("kept"), unique("gone")
    _, a = register(broker, kept, USER_V1)
    call(broker, "PUT", f"/config/{kept}", {"compatibility": "FORWARD"})
    _, b = register(broker, gone, {"type": "record", "name": "Gone", "fields": []})
    call(broker, "DELETE", f"/subjects/{gone}")
    soft = unique("soft")
    register(broker, soft, {"type": "record", "name": "Soft", "fields": [{"name": "x", "type": "long"}]})
    call(broker, "DELETE", f"/subjects/{soft}/versions/1")
    call(broker, "DELETE", f"/subjects/{gone}?permanent=true")

    broker.kill9()
    broker.start()
    wait_ready(broker)
    assert call(broker, "GET", f"/subjects/{kept}/versions/1")[1]["id"] == a["id"]
    assert call(broker, "GET", f"/config/{kept}")[1] == {"compatibilityLevel": "FORWARD"}
    assert call(broker, "GET", f"/subjects/{soft}/versions")[1]["error_code"] == 40401
    assert call(broker, "GET", f"/subjects/{soft}/versions?deleted=true")[1] == [1]
    assert call(broker, "GET", f"/subjects/{gone}/versions?deleted=true")[1]["error_code"] == 40401
    _, c = register(broker, unique("new"), {"type": "record", "name": "New", "fields": []})
    assert c["id"] > b["id"], (b, c)
