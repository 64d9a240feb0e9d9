#!/usr/bin/env python3
"""A foreign CloudEvents client for busline's interop tests.

`tests/cloudevents_sdk.rs` runs this script as a child process. It speaks to
the brokers with their own Python clients (confluent-kafka, pika, nats-py)
and converts with the Python CloudEvents SDK (cloudevents 2.2.0), so busline
is judged by code it does not share:

  read-*   consume one busline event and print the SDK's view of it
  write-*  write SDK events in binary and structured mode, print what was written
  delete-nats-streams  remove the streams a test made

Every command prints one JSON object on stdout and is bounded by --timeout
(and by an alarm a little later, in case a client blocks where asyncio
cannot interrupt it). Where the SDK refuses what it reads, the command exits
2 and prints {"sdk_error": ...}: the test shows that message.
"""

import argparse
import asyncio
import json
import signal
import sys
import time

INSTALL = (
    "python3 -m venv $HOME/.cache/busline-interop-venv && "
    "$HOME/.cache/busline-interop-venv/bin/pip install -r interop/requirements.txt"
)

try:
    from cloudevents.core.bindings import amqp as ce_amqp
    from cloudevents.core.bindings import kafka as ce_kafka
    from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
    from cloudevents.core.bindings.common import decode_header_value, encode_header_value
    from cloudevents.core.exceptions import BaseCloudEventException
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent
except ImportError as missing:
    sys.exit(f"the CloudEvents SDK is missing ({missing}); install it with: {INSTALL}")


def need(module):
    """Imports a broker client, or exits with the install command."""
    try:
        return __import__(module)
    except ImportError as missing:
        sys.exit(f"{module} is missing ({missing}); install it with: {INSTALL}")


def emit(obj, code=0):
    print(json.dumps(obj, sort_keys=True), flush=True)
    sys.exit(code)


def text(value):
    """A header value as text for the report (bytes decoded, ints kept)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def sdk_view(convert, headers):
    """Runs an SDK conversion; its event as the SDK's own JSON format, or
    the SDK's refusal with the headers it was given."""
    try:
        event = convert()
    except (BaseCloudEventException, ValueError, TypeError, KeyError) as refused:
        emit({"sdk_error": f"{type(refused).__name__}: {refused}", "headers": headers}, 2)
    return json.loads(JSONFormat().write(event))


def sdk_events(event_type, source):
    """The events the SDK writes: one for binary mode, one for structured.
    The SDK fills in id, specversion and time itself."""
    def make(order_id, parcels):
        return CloudEvent(
            {
                "type": event_type,
                "source": source,
                "datacontenttype": "application/json",
                "tenant": "acme corp",
                "partitionkey": f"key-{order_id}",
            },
            {"order_id": order_id, "parcels": parcels},
        )

    return {"binary": make("o-binary", 2), "structured": make("o-structured", 3)}


def written(events):
    return {mode: json.loads(JSONFormat().write(e)) for mode, e in events.items()}


# ---------------------------------------------------------------- Kafka

def kafka_client():
    return need("confluent_kafka")


def read_kafka(args):
    ck = kafka_client()
    consumer = ck.Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"sdk-reader-{time.time_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    deadline = time.monotonic() + args.timeout
    try:
        meta = consumer.list_topics(args.topic, timeout=args.timeout)
        partitions = sorted(meta.topics[args.topic].partitions)
        if not partitions:
            sys.exit(f"topic {args.topic} has no partitions")
        # A fresh topic, read from its first offset of every partition.
        consumer.assign(
            [ck.TopicPartition(args.topic, p, ck.OFFSET_BEGINNING) for p in partitions]
        )
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                sys.exit(f"kafka error: {msg.error()}")
            headers = {k: v for k, v in (msg.headers() or [])}
            if headers.get("ce_id") != args.id.encode():
                continue
            message = ce_kafka.KafkaMessage(headers=headers, key=msg.key(), value=msg.value())
            shown = {k: text(v) for k, v in headers.items()}
            event = sdk_view(lambda: ce_kafka.from_binary_event(message), shown)
            emit({"event": event, "headers": shown, "key": text(msg.key())})
    finally:
        consumer.close()
    sys.exit(f"no record with ce_id {args.id} on {args.topic} within {args.timeout}s")


def write_kafka(args):
    ck = kafka_client()
    producer = ck.Producer(
        {"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True}
    )
    events = sdk_events(args.type, args.source)
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    for mode, event in events.items():
        convert = ce_kafka.to_binary_event if mode == "binary" else ce_kafka.to_structured_event
        message = convert(event)
        producer.produce(
            args.topic,
            value=message.value,
            key=message.key,
            headers=list(message.headers.items()),
            on_delivery=report,
        )
    left = producer.flush(args.timeout)
    if left or failures:
        sys.exit(f"kafka produce failed: {left} undelivered, errors {failures}")
    emit({"written": written(events)})


# ------------------------------------------------------------- RabbitMQ

def pika_client():
    return need("pika")


def read_rabbitmq(args):
    pika = pika_client()
    params = pika.URLParameters(args.url)
    params.socket_timeout = args.timeout
    params.blocked_connection_timeout = args.timeout
    connection = pika.BlockingConnection(params)
    deadline = time.monotonic() + args.timeout
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=16)
        for method, props, body in channel.consume(args.queue, inactivity_timeout=0.5):
            if time.monotonic() >= deadline:
                break
            if method is None:
                continue
            channel.basic_ack(method.delivery_tag)
            table = props.headers or {}
            if text(table.get("cloudEvents_id")) != args.id:
                continue
            shown = {k: text(v) for k, v in table.items()}
            shown["(content_type)"] = props.content_type
            if args.binding == "amqp":
                message = ce_amqp.AMQPMessage(
                    properties={"content-type": props.content_type} if props.content_type else {},
                    application_properties=dict(table),
                    application_data=body,
                )
                event = sdk_view(lambda: ce_amqp.from_binary_event(message), shown)
            else:
                message = ce_rabbitmq.RabbitMQMessage(
                    headers={k: text(v) for k, v in table.items()},
                    content_type=props.content_type,
                    body=body,
                )
                event = sdk_view(lambda: ce_rabbitmq.from_binary_event(message), shown)
            emit({"event": event, "headers": shown})
    finally:
        connection.close()
    sys.exit(f"no message with id {args.id} in {args.queue} within {args.timeout}s")


def rfc3339(moment):
    s = moment.isoformat()
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def amqp_binary(event, time_as, separator):
    """The SDK's AMQP binding, as pika properties. `time_as` "native" keeps
    the binding's AMQP timestamp (milliseconds as an integer); "string"
    writes the canonical string form, which the binding also allows.
    `separator` ":" renames the SDK's `cloudEvents_` properties to
    `cloudEvents:`, the binding's other permitted prefix."""
    message = ce_amqp.to_binary_event(event)
    table = dict(message.application_properties)
    if time_as == "string":
        table["cloudEvents_time"] = rfc3339(event.get_time())
    if separator == ":":
        table = {"cloudEvents:" + k[len("cloudEvents_"):]: v for k, v in table.items()}
    return table, message.properties.get("content-type"), message.application_data


def write_rabbitmq(args):
    pika = pika_client()
    params = pika.URLParameters(args.url)
    params.socket_timeout = args.timeout
    params.blocked_connection_timeout = args.timeout
    events = sdk_events(args.type, args.source)
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for mode, event in events.items():
            if mode == "structured":
                message = ce_rabbitmq.to_structured_event(event)
                table, content_type, body = message.headers, message.content_type, message.body
            elif args.binding == "rabbitmq":
                message = ce_rabbitmq.to_binary_event(event)
                table, content_type, body = message.headers, message.content_type, message.body
            else:
                table, content_type, body = amqp_binary(event, args.time_as, args.separator)
            # Raises on a nack or an unroutable message (mandatory).
            channel.basic_publish(
                exchange=args.exchange,
                routing_key=args.type,
                body=body,
                properties=pika.BasicProperties(
                    content_type=content_type, headers=table or None, delivery_mode=2
                ),
                mandatory=True,
            )
    finally:
        connection.close()
    emit({"written": written(events)})


# ----------------------------------------------------------------- NATS

def nats_client():
    return need("nats")


async def with_nats(url, timeout, work):
    nats = nats_client()
    nc = await nats.connect(url, connect_timeout=timeout, allow_reconnect=False)
    try:
        return await asyncio.wait_for(work(nc.jetstream()), timeout)
    finally:
        await nc.close()


def nats_event(headers, body):
    """A NATS binary-mode message as an SDK event, by the NATS binding:
    every `ce-` header is an attribute, percent-decoded (the SDK's own
    header decoding), `ce-datacontenttype` included. The binding maps no
    other header; where `ce-datacontenttype` is absent, the `Content-Type`
    header is taken, and the result says which one the type came from."""
    attributes = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-"):
            attributes[lower[3:]] = decode_header_value(lower[3:], value)
    source = "ce-datacontenttype" if "datacontenttype" in attributes else None
    if source is None:
        for name, value in headers.items():
            if name.lower() == "content-type":
                attributes["datacontenttype"] = value
                source = "content-type"
    data = JSONFormat().read_data(body, attributes.get("datacontenttype"))
    return (lambda: CloudEvent(attributes, data)), source


def read_nats(args):
    async def work(js):
        sub = await js.subscribe(args.subject, stream=args.stream, ordered_consumer=True)
        try:
            while True:
                msg = await sub.next_msg(timeout=args.timeout)
                headers = dict(msg.headers or {})
                if decode_header_value("id", headers.get("ce-id", "")) != args.id:
                    continue
                convert, type_from = nats_event(headers, msg.data)
                event = sdk_view(convert, headers)
                return {"event": event, "headers": headers, "datacontenttype_from": type_from}
        finally:
            await sub.unsubscribe()

    emit(asyncio.run(with_nats(args.url, args.timeout, work)))


def nats_binary(event):
    """Headers by the NATS binding: `ce-` + attribute name for every
    attribute, `datacontenttype` too, values percent-encoded with the SDK's
    own header encoding."""
    headers = {f"ce-{name}": encode_header_value(value) for name, value in event.get_attributes().items()}
    body = JSONFormat().write_data(event.get_data(), event.get_datacontenttype())
    return headers, body


def write_nats(args):
    events = sdk_events(args.type, args.source)

    async def work(js):
        for mode, event in events.items():
            if mode == "binary":
                headers, body = nats_binary(event)
            else:
                fmt = JSONFormat()
                headers, body = {"Content-Type": fmt.get_content_type()}, fmt.write(event)
            await js.publish(args.subject, body, stream=args.stream, headers=headers)

    asyncio.run(with_nats(args.url, args.timeout, work))
    emit({"written": written(events)})


def delete_nats_streams(args):
    async def work(js):
        nats = nats_client()
        deleted = []
        for name in args.streams:
            try:
                await js.delete_stream(name)
                deleted.append(name)
            except nats.js.errors.NotFoundError:
                pass
        return {"deleted": deleted}

    emit(asyncio.run(with_nats(args.url, args.timeout, work)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=30.0)
    commands = parser.add_subparsers(dest="command", required=True)

    c = commands.add_parser("read-kafka")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--id", required=True)
    c.set_defaults(run=read_kafka)
    c = commands.add_parser("write-kafka")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", required=True)
    c.add_argument("--type", required=True)
    c.add_argument("--source", required=True)
    c.set_defaults(run=write_kafka)

    c = commands.add_parser("read-rabbitmq")
    c.add_argument("--url", required=True)
    c.add_argument("--queue", required=True)
    c.add_argument("--id", required=True)
    c.add_argument("--binding", choices=["amqp", "rabbitmq"], default="amqp")
    c.set_defaults(run=read_rabbitmq)
    c = commands.add_parser("write-rabbitmq")
    c.add_argument("--url", required=True)
    c.add_argument("--exchange", required=True)
    c.add_argument("--type", required=True)
    c.add_argument("--source", required=True)
    c.add_argument("--binding", choices=["amqp", "rabbitmq"], default="amqp")
    c.add_argument("--time-as", choices=["native", "string"], default="native")
    c.add_argument("--separator", choices=["_", ":"], default="_")
    c.set_defaults(run=write_rabbitmq)

    c = commands.add_parser("read-nats")
    c.add_argument("--url", required=True)
    c.add_argument("--stream", required=True)
    c.add_argument("--subject", required=True)
    c.add_argument("--id", required=True)
    c.set_defaults(run=read_nats)
    c = commands.add_parser("write-nats")
    c.add_argument("--url", required=True)
    c.add_argument("--stream", required=True)
    c.add_argument("--subject", required=True)
    c.add_argument("--type", required=True)
    c.add_argument("--source", required=True)
    c.set_defaults(run=write_nats)
    c = commands.add_parser("delete-nats-streams")
    c.add_argument("--url", required=True)
    c.add_argument("streams", nargs="+")
    c.set_defaults(run=delete_nats_streams)

    args = parser.parse_args()
    # A last bound where a client blocks in C code asyncio cannot cancel.
    signal.alarm(int(args.timeout) + 10)
    args.run(args)


if __name__ == "__main__":
    main()
