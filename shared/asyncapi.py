"""The AsyncAPI 3.0 document of the event contract, generated from the models in `shared.events`.

`python -m shared.asyncapi > docs/asyncapi.yaml` writes it; a unit test keeps the committed file equal
to what the models say, and reads it with the official parser (`@asyncapi/parser`) where Node is.

One channel per event type (its address is the routing key on the topic exchange) and one per
daemon's dead-letter queue; and the `status.query` request/reply (plain JSON, not an event: direct
reply-to, the answer on the default exchange to `reply_to` with the same `correlation_id`).
Operations are the trust model: for every event, which component may send it and which components
receive it. The broker vouches for the publishing user; jit-approval
refuses `elevation.decided` from any broker user not in `JIT_DECISION_PUBLISHERS`.
"""

from __future__ import annotations

from typing import Any

import yaml

from shared.events import DATA_MODELS, STATUS_QUERY, StatusQuery, StatusReply

COMPONENTS = {
    "connectionWorkflow": "the PAM connection workflow (upstream)",
    "requestsTab": "the Requests tab, where approvers decide (upstream)",
    "jitctl": "the operator's CLI",
    "approval": "jit-approval",
    "elevator": "jit-elevator",
    "reaper": "jit-reaper",
}
# Who may send each event type.
SENDERS: dict[str, tuple[str, ...]] = {
    "elevation.requested": ("connectionWorkflow",),
    "elevation.decided": ("requestsTab", "jitctl"),
    "elevation.approved": ("approval",),
    "elevation.denied": ("approval",),
    "elevation.cancelled": ("approval", "reaper"),
    "elevation.elevated": ("elevator",),
    "elevation.failed": ("elevator", "reaper"),
    "secret.checked_in": ("connectionWorkflow",),
    "elevation.expired": ("reaper", "connectionWorkflow"),
    "elevation.revoke_requested": ("jitctl",),
    "elevation.extend_requested": ("connectionWorkflow",),
    "elevation.extended": ("approval",),
    "elevation.extension_denied": ("approval",),
    "elevation.revoked": ("reaper",),
    "elevation.revocation_stalled": ("reaper",),
    "membership.drift": ("reaper",),
}
# What each daemon consumes (its routing keys; a test holds this equal to the services' ROUTING_KEYS).
CONSUMED: dict[str, tuple[str, ...]] = {
    "approval": ("elevation.requested", "elevation.decided", "elevation.extend_requested"),
    "elevator": ("elevation.approved",),
    "reaper": ("secret.checked_in", "elevation.expired", "elevation.revoke_requested"),
}
AMQP_BINDING = "0.3.0"


def _camel(event_type: str) -> str:
    words = event_type.replace(".", "_").split("_")
    return words[0] + "".join(w.title() for w in words[1:])


def _title(component: str) -> str:
    return component[0].upper() + component[1:]


def _message(event_type: str) -> dict[str, Any]:
    model = DATA_MODELS[event_type]
    message = {
        "name": event_type,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip() or None,
        "contentType": "application/cloudevents+json",
        "payload": {"allOf": [{"$ref": "#/components/schemas/CloudEvent"}, {
            "type": "object", "required": ["data"],
            "properties": {"type": {"const": event_type},
                           "data": {"$ref": f"#/components/schemas/{model.__name__}"}}}]},
        "bindings": {"amqp": {"messageType": event_type, "bindingVersion": AMQP_BINDING}},
    }
    return {k: v for k, v in message.items() if v is not None}


def _event_channel(event_type: str) -> dict[str, Any]:
    name = DATA_MODELS[event_type].__name__
    return {
        "address": event_type,
        "description": f"Routing key `{event_type}` on the topic exchange.",
        "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        "bindings": {"amqp": {"is": "routingKey", "exchange": {
            "name": "jit.events", "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"},
            "bindingVersion": AMQP_BINDING}},
    }


def _dead_letter_channel(daemon: str) -> dict[str, Any]:
    names = [DATA_MODELS[t].__name__ for t in CONSUMED[daemon]]
    return {
        "address": f"jit.{daemon}.dead",
        "description": (f"The dead-letter queue of jit-{daemon} (`<JIT_QUEUE_PREFIX>.{daemon}.dead`): messages it "
                        "refused as invalid, or whose delivery limit was spent. The original routing key is in "
                        "the `x-death` header. Nothing consumes it; see docs/runbook.md to replay."),
        "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in names},
        "bindings": {"amqp": {"is": "queue", "queue": {
            "name": f"jit.{daemon}.dead", "durable": True, "exclusive": False, "autoDelete": False, "vhost": "/"},
            "bindingVersion": AMQP_BINDING}},
    }


def _status_channels(schemas: dict[str, Any]) -> dict[str, Any]:
    for model in (StatusQuery, StatusReply):
        schemas[model.__name__] = model.model_json_schema(mode="serialization",
                                                          ref_template="#/components/schemas/{model}")
    schemas["StatusError"] = {"type": "object", "required": ["error"], "additionalProperties": False,
                              "properties": {"error": {"type": "string"}}}

    def message(name: str, summary: str, schema: str) -> dict[str, Any]:
        return {"name": name, "title": name, "summary": summary, "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{schema}"},
                "correlationId": {"location": "$message.header#/correlation_id"}}

    return {
        "statusQuery": {
            "address": STATUS_QUERY,
            "description": "Routing key `status.query` on the topic exchange: the connection workflow asks for a "
                           "credential's elevation status; every jit-approval replica serves it.",
            "messages": {"StatusQuery": message("StatusQuery", StatusQuery.__doc__ or "", "StatusQuery")},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": "jit.events", "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"},
                "bindingVersion": AMQP_BINDING}},
        },
        "statusReply": {
            "address": None,
            "description": "The asker's direct reply-to pseudo-queue (`amq.rabbitmq.reply-to`), named by the "
                           "query's `reply_to`.",
            "messages": {
                "StatusReply": message("StatusReply", StatusReply.__doc__ or "", "StatusReply"),
                "StatusError": message("StatusError", "A malformed query: what is wrong with it.", "StatusError"),
            },
        },
    }


def _status_operations() -> dict[str, Any]:
    reply = {"channel": {"$ref": "#/channels/statusReply"},
             "address": {"location": "$message.header#/reply_to"},
             "messages": [{"$ref": "#/channels/statusReply/messages/StatusReply"},
                          {"$ref": "#/channels/statusReply/messages/StatusError"}]}
    query = [{"$ref": "#/channels/statusQuery/messages/StatusQuery"}]
    return {
        "connectionWorkflowSendsStatusQuery": {
            "action": "send", "channel": {"$ref": "#/channels/statusQuery"}, "messages": query, "reply": reply,
            "summary": "The connection workflow asks for a status and waits for the reply on direct reply-to."},
        "approvalReceivesStatusQuery": {
            "action": "receive", "channel": {"$ref": "#/channels/statusQuery"}, "messages": query, "reply": reply,
            "summary": "Every jit-approval replica answers status queries from its queue jit.approval.status."},
    }


def _operations() -> dict[str, Any]:
    operations: dict[str, Any] = _status_operations()
    for event_type, senders in SENDERS.items():
        channel, name = _camel(event_type), DATA_MODELS[event_type].__name__
        message = [{"$ref": f"#/channels/{channel}/messages/{name}"}]
        for sender in senders:
            operations[f"{sender}Sends{_title(channel)}"] = {
                "action": "send", "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"{COMPONENTS[sender]} may publish {event_type}.",
                "messages": message,
                "bindings": {"amqp": {"deliveryMode": 2, "mandatory": False, "bindingVersion": AMQP_BINDING}},
            }
        for daemon, consumed in CONSUMED.items():
            if event_type in consumed:
                operations[f"{daemon}Receives{_title(channel)}"] = {
                    "action": "receive", "channel": {"$ref": f"#/channels/{channel}"},
                    "summary": f"jit-{daemon} consumes {event_type} from its queue jit.{daemon}.",
                    "messages": message,
                    "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
                }
    for daemon, consumed in CONSUMED.items():
        channel = f"{daemon}DeadLetters"
        operations[f"operatorReceives{_title(channel)}"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"An operator inspects and replays what jit-{daemon} dead-lettered.",
            "messages": [{"$ref": f"#/channels/{channel}/messages/{DATA_MODELS[t].__name__}"} for t in consumed],
        }
    return operations


def document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for event_type, model in DATA_MODELS.items():
        schema = model.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        messages[model.__name__] = _message(event_type)
        channels[_camel(event_type)] = _event_channel(event_type)
    for daemon in CONSUMED:
        channels[f"{daemon}DeadLetters"] = _dead_letter_channel(daemon)
    channels.update(_status_channels(schemas))
    schemas["CloudEvent"] = {
        "type": "object", "required": ["specversion", "id", "source", "type"],
        "properties": {"specversion": {"const": "1.0"}, "id": {"type": "string", "maxLength": 128},
                       "source": {"type": "string"}, "type": {"type": "string"},
                       "time": {"type": "string", "format": "date-time"},
                       "datacontenttype": {"const": "application/json"}, "data": {"type": "object"}},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "jit-elevation events", "version": "1.0.0",
                 "description": "CloudEvents 1.0 in structured JSON mode on one durable topic exchange "
                                "(JIT_EXCHANGE, default jit.events), routing key = event type, persistent, "
                                "message_id = the event id. Operations name who may send each event and who "
                                "receives it. Queue names assume JIT_QUEUE_PREFIX=jit."},
        "defaultContentType": "application/cloudevents+json",
        "servers": {"broker": {"host": "localhost:5672", "protocol": "amqp", "protocolVersion": "0-9-1",
                               "description": "RabbitMQ (JIT_AMQP_URL)"}},
        "channels": channels,
        "operations": _operations(),
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=110)


if __name__ == "__main__":
    print(render(), end="")
