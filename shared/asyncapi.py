"""The AsyncAPI 2.6 document of the event contract, generated from the models in `shared.events`.

`python -m shared.asyncapi > docs/asyncapi.yaml` writes it; a unit test keeps the committed file equal
to what the models say.
"""

from __future__ import annotations

from typing import Any

import yaml

from shared.events import DATA_MODELS

CONSUMED_BY_US = {"elevation.requested", "elevation.decided", "secret.checked_in", "elevation.expired",
                  "elevation.revoke_requested", "elevation.approved"}


def document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for event_type, model in DATA_MODELS.items():
        schema = model.model_json_schema(mode="serialization", ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        message = {
            "name": event_type,
            "title": model.__name__,
            "summary": (model.__doc__ or "").strip() or None,
            "contentType": "application/cloudevents+json",
            "payload": {"allOf": [{"$ref": "#/components/schemas/CloudEvent"}, {
                "type": "object", "required": ["data"],
                "properties": {"type": {"const": event_type},
                               "data": {"$ref": f"#/components/schemas/{model.__name__}"}}}]},
            "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": "0.2.0"}},
        }
        operation = "publish" if event_type in CONSUMED_BY_US else "subscribe"
        channels[event_type] = {
            operation: {"message": {k: v for k, v in message.items() if v is not None}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {
                "name": "jit.events", "type": "topic", "durable": True, "autoDelete": False}}},
        }
    schemas["CloudEvent"] = {
        "type": "object", "required": ["specversion", "id", "source", "type"],
        "properties": {"specversion": {"const": "1.0"}, "id": {"type": "string", "maxLength": 128},
                       "source": {"type": "string"}, "type": {"type": "string"},
                       "time": {"type": "string", "format": "date-time"},
                       "datacontenttype": {"const": "application/json"}, "data": {"type": "object"}},
    }
    return {
        "asyncapi": "2.6.0",
        "info": {"title": "jit-elevation events", "version": "1.0.0",
                 "description": "Routing key = event type on the topic exchange (JIT_EXCHANGE, default jit.events)."
                                " 'publish' = what the service receives; 'subscribe' = what it sends."},
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "components": {"schemas": schemas},
    }


def render() -> str:
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=110)


if __name__ == "__main__":
    print(render(), end="")
