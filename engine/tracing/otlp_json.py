"""OTLP JSON: the JSON form of an OTLP `ExportTraceServiceRequest`.

It is the protobuf JSON mapping with the differences that the OTLP
specification makes: trace and span ids are hex strings, not base64, and enum
fields are integers. Keys are lowerCamelCase, and 64-bit integers such as
`startTimeUnixNano` are decimal strings, both as in the protobuf JSON mapping.
This is the format of the jsonl exporter's lines and of `engine trace --otlp`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import ReadableSpan

_SPAN_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def encode_request(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """Return `spans` as one OTLP JSON request object."""
    data = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    _convert_ids(data, _base64_to_hex)
    return data


def dumps(spans: Sequence[ReadableSpan]) -> str:
    """Return `spans` as one line of OTLP JSON, without a trailing newline."""
    return json.dumps(encode_request(spans), separators=(",", ":"))


def decode_request(data: dict[str, Any]) -> ExportTraceServiceRequest:
    """Parse one OTLP JSON request object into the protobuf message.

    Raises `google.protobuf.json_format.ParseError` or `ValueError` when `data`
    is not OTLP JSON.
    """
    copied = json.loads(json.dumps(data))
    _convert_ids(copied, _hex_to_base64)
    message = ExportTraceServiceRequest()
    json_format.ParseDict(copied, message, ignore_unknown_fields=True)
    return message


def _convert_ids(data: dict[str, Any], convert: Callable[[str], str]) -> None:
    for resource_spans in data.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _convert_fields(span, convert)
                for link in span.get("links", []):
                    _convert_fields(link, convert)


def _convert_fields(item: dict[str, Any], convert: Callable[[str], str]) -> None:
    for field in _SPAN_ID_FIELDS:
        if item.get(field):
            item[field] = convert(item[field])


def _base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_base64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")
