"""OpenAPI 3 description of the merchant API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from gateway.public_schema import DISPUTE_FIELDS, STATUSES, payment_schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request", 401: "Bad or missing API key", 404: "No such payment",
            409: "Invalid state, or a request with this key is in progress",
            422: "Idempotency-Key reused with a different body",
            503: "Provider unavailable; nothing changed (Retry-After)"}
    return {str(c): {"description": text[c],
                     "content": {"application/json": {"schema": _ref("Error")}}} for c in codes}


_PAYMENT_ID = {"name": "payment_id", "in": "path", "required": True, "schema": {"type": "string"}}
_IDEM = {"name": "Idempotency-Key", "in": "header", "required": True,
         "schema": {"type": "string", "minLength": 1, "maxLength": 255}}


def _post(summary: str, body: str | None, ok: int, *errors: int) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [_IDEM] if body == "CreatePayment" else [_PAYMENT_ID, _IDEM],
        "responses": {str(ok): {"description": "The payment",
                                "content": {"application/json": {"schema": _ref("Payment")}}},
                      **_error_responses(*errors)},
    }
    if body:
        op["requestBody"] = {"required": body == "CreatePayment",
                             "content": {"application/json": {"schema": _ref(body)}}}
    return {"post": op}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}

#: A merchant notification: the POSTed body (SPEC 3.2), as gateway/notifications.py builds it.
_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "type", "created", "sequence", "previous_sequence", "data",
                 "previous_status", "source"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["event"]},
        "type": {"type": "string", "description": "payment.<status>, payment.updated (the "
                 "status did not change) or dispute.created|updated|won|lost"},
        "created": {"type": "integer", "description": "unix seconds"},
        "sequence": {"type": "integer", "minimum": 0,
                     "description": "the payment's version after the change; per payment, "
                                    "events are delivered in sequence order"},
        "previous_sequence": {"type": "integer", "nullable": True,
                              "description": "the sequence of the payment's previous event; "
                                             "null for its first"},
        "data": {"type": "object", "required": ["object"], "properties": {
            "object": _ref("Payment"),
            "dispute": {"type": "object", "nullable": True, "properties": DISPUTE_FIELDS,
                        "description": "dispute.* events: that dispute"}}},
        "previous_status": {"type": "string", "nullable": True},
        "source": {"type": "string", "description": "what made the change, e.g. "
                   "webhook:<provider>, reconciliation, operator"},
    },
}

#: An event as GET /v1/events answers it: the body plus its delivery.
_EVENT_WITH_DELIVERY: dict[str, Any] = {"allOf": [_ref("Event"), {
    "type": "object", "required": ["delivery"], "properties": {"delivery": {
        "type": "object", "required": ["state", "attempts", "next_attempt_at", "delivered_at"],
        "properties": {
            "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "array", "items": {
                "type": "object", "required": ["at"], "properties": {
                    "at": _NULLABLE_TIME, "status": {"type": "integer"},
                    "error": {"type": "string"}, "duration_ms": {"type": "number"}}}},
            "next_attempt_at": _NULLABLE_TIME,
            "delivered_at": _NULLABLE_TIME}}}}]}


def _event_answer(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("EventWithDelivery")}}}


#: GET /v1/payments (SPEC 3.1).
_LIST: dict[str, Any] = {
    "summary": "Search and list payments, newest first",
    "description": (
        "The merchant's own payments ordered by created_at, then id, both descending. "
        "Every filter given must match. Pages: pass the last id of a page as "
        "starting_after; the next page continues strictly after that payment, so pages "
        "neither repeat nor skip while payments are created. An unknown query "
        "parameter, a repeated one or an invalid value is a 400 naming it in param; "
        "starting_after that is not one of the merchant's payments is a 400 "
        "resource_missing."),
    "parameters": [
        _query("reference", "the merchant's reference given at creation", maxLength=255),
        _query("status", "current status", enum=STATUSES),
        _query("provider", "the provider holding the payment (gateway.yaml name)",
               maxLength=255),
        _query("created[gte]", "created at or after (ISO 8601 with a time zone, or a date)",
               format="date-time"),
        _query("created[lt]", "created before (ISO 8601 with a time zone, or a date)",
               format="date-time"),
        {"name": "limit", "in": "query", "required": False,
         "description": "page size", "schema": {"type": "integer", "minimum": 1,
                                                "maximum": 100, "default": 20}},
        _query("starting_after", "a payment id: the page starts after it"),
    ],
    "responses": {"200": {"description": "One page of payments", "content": {
        "application/json": {"schema": _ref("PaymentList")}}},
        **_error_responses(400, 401)},
}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Payment routing gateway - merchant API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["type", "code", "message"],
                "properties": {"type": {"type": "string", "enum": [
                    "invalid_request", "authentication_failed", "not_found", "invalid_state",
                    "idempotency_conflict", "provider_unavailable", "internal"]},
                    "code": {"type": "string"}, "message": {"type": "string"},
                    "param": {"type": "string"}}}}},
            "CreatePayment": {
                "type": "object", "required": ["amount", "currency", "payment_method"],
                "additionalProperties": False,
                "properties": {
                    "amount": {"type": "integer", "minimum": 1,
                               "description": "in the currency's minor unit"},
                    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "capture": {"type": "string", "enum": ["automatic", "manual"],
                                "default": "automatic"},
                    "payment_method": {"type": "object", "properties": {
                        "type": {"type": "string", "enum": ["card"]},
                        "token": {"type": "string"}, "brand": {"type": "string"},
                        "provider_tokens": {"type": "object",
                                            "additionalProperties": {"type": "string"}},
                        "three_d_secure": {
                            "type": "string", "enum": ["automatic", "required"],
                            "default": "automatic",
                            "description": "required: only providers that can complete a "
                                           "3-D Secure challenge are candidates (the "
                                           "sandbox token tok_3ds implies it)"}}},
                    "return_url": {"type": "string", "format": "uri", "maxLength": 2048,
                                   "description": "where the customer's browser ends up "
                                                  "after a 3-D Secure challenge (with "
                                                  "payment_id appended)"},
                    "reference": {"type": "string", "maxLength": 255},
                    "customer": {"type": "object", "properties": {
                        "country": {"type": "string", "pattern": "^[A-Z]{2}$"}}},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                }},
            "Capture": {"type": "object", "additionalProperties": False,
                        "properties": {"amount": {"type": "integer", "minimum": 1}}},
            "Refund": {"type": "object", "additionalProperties": False,
                       "properties": {"amount": {"type": "integer", "minimum": 1},
                                      "reason": {"type": "string"}}},
            "Confirm": {"type": "object", "additionalProperties": False, "properties": {},
                        "description": "empty: what the customer's return carried is "
                                       "already on the payment"},
            "Void": {"type": "object", "additionalProperties": False,
                     "properties": {"reason": {"type": "string", "maxLength": 255}}},
            "Payment": payment_schema(),
            "PaymentList": {
                "type": "object", "required": ["object", "data", "has_more"],
                "properties": {"object": {"type": "string", "enum": ["list"]},
                               "data": {"type": "array", "items": _ref("Payment")},
                               "has_more": {"type": "boolean"}}},
            "Event": _EVENT,
            "EventWithDelivery": _EVENT_WITH_DELIVERY,
            "EventList": {
                "type": "object", "required": ["object", "data", "has_more"],
                "properties": {"object": {"type": "string", "enum": ["list"]},
                               "payment_id": {"type": "string"},
                               "data": {"type": "array", "items": _ref("EventWithDelivery")},
                               "has_more": {"type": "boolean"}}},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/payments": {**_post("Create and authorize a payment", "CreatePayment", 201,
                                 400, 401, 409, 422), "get": _LIST},
        "/v1/payments/{payment_id}": {"get": {
            "summary": "Current state of a payment", "parameters": [_PAYMENT_ID],
            "responses": {"200": {"description": "The payment", "content": {
                "application/json": {"schema": _ref("Payment")}}}, **_error_responses(401, 404)}}},
        "/v1/payments/{payment_id}/capture": _post("Capture all or part", "Capture", 200,
                                                   400, 401, 404, 409, 422, 503),
        "/v1/payments/{payment_id}/void": _post("Cancel an uncaptured authorization", "Void", 200,
                                                400, 401, 404, 409, 422, 503),
        "/v1/payments/{payment_id}/confirm": _post(
            "Finish a requires_action payment after the customer's 3-D Secure challenge "
            "(SPEC 3.3); a payment already finished meanwhile answers its current state",
            "Confirm", 200, 400, 401, 404, 409, 422, 503),
        "/v1/payments/{payment_id}/refunds": _post("Refund all or part", "Refund", 201,
                                                   400, 401, 404, 409, 422, 503),
        "/v1/events/{event_id}": {"get": {
            "summary": "A merchant notification event with its delivery attempts",
            "parameters": [{"name": "event_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _event_answer("The event"), **_error_responses(401, 404)}}},
        "/v1/events/{event_id}/redeliver": {"post": {
            "summary": "Queue an event for delivery again, in its payment's order (SPEC 3.2)",
            "parameters": [{"name": "event_id", "in": "path", "required": True,
                            "schema": {"type": "string"}},
                           {"name": "Idempotency-Key", "in": "header", "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
            "responses": {"200": _event_answer("The event, queued (delivery.state pending)"),
                          **_error_responses(400, 401, 404, 409, 422)}}},
        "/v1/events": {"get": {
            "summary": "Notification events: one payment's (oldest first, all) or the "
                       "merchant's (newest first, in pages)",
            "parameters": [
                {"name": "payment_id", "in": "query", "schema": {"type": "string"}},
                {"name": "type", "in": "query", "schema": {"type": "string"},
                 "description": "e.g. payment.captured, dispute.created"},
                {"name": "delivery", "in": "query",
                 "schema": {"type": "string", "enum": ["pending", "delivered", "failed"]}},
                {"name": "limit", "in": "query", "description": "without payment_id only",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                {"name": "starting_after", "in": "query", "description":
                 "the last event id of the previous page (without payment_id only)",
                 "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Events", "content": {"application/json": {
                "schema": _ref("EventList")}}},
                          **_error_responses(400, 401, 404)}}},
        "/v1/payments/{payment_id}/ledger": {"get": {
            "summary": "The payment's double-entry ledger entries, oldest first (SPEC 16)",
            "parameters": [_PAYMENT_ID],
            "responses": {"200": {"description": "Entries ({object: list, payment_id, data: "
                                                 "[{id, entry_type, amount, currency, debit, "
                                                 "credit, created_at, source}]})"},
                          **_error_responses(401, 404)}}},
        "/v1/payments/{payment_id}/events": {"get": {
            "summary": "Audit trail", "parameters": [_PAYMENT_ID],
            "responses": {"200": {"description": "Events"}, **_error_responses(401, 404)}}},
    },
}
