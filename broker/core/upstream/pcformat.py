"""Partner Center `/generatetoken` wire format, shared by the sandbox and the drop-in mirror so
both read and write it the same way.

Request bodies: application/json, text/json, application/xml, text/xml,
application/x-www-form-urlencoded, each carrying `grant_type=jwt_token` (JSON also as the bare
string `"jwt_token"`, as the generated Python SDK sends it). Responses:
application/json, text/json, application/xml, text/xml.
"""

from __future__ import annotations

import json
import urllib.parse
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as xml_fromstring

from broker.core.tokens.render import negotiate
from broker.core.upstream.streams import load_json

GRANT = "jwt_token"
BODY_TYPES = (
    "application/json",
    "text/json",
    "application/xml",
    "text/xml",
    "application/x-www-form-urlencoded",
)
RESPONSE_TYPES = ("application/json", "text/json", "application/xml", "text/xml")
MAX_BODY = 64 * 1024


class BadRequest(ValueError):
    """A request Partner Center would refuse without looking further: `status` and why."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def media_type(content_type: str | None) -> str:
    """`Text/XML; charset=utf-8` → `text/xml`."""
    return (content_type or "").split(";")[0].strip().lower()


def response_type(accept: str | None) -> str | None:
    return negotiate(accept, RESPONSE_TYPES)


def parse_xml(body: bytes) -> ET.Element:
    """Parse with DTDs, entities and external references forbidden, whatever the encoding
    (a byte search for "<!DOCTYPE" misses it in UTF-16): DefusedXmlException or ParseError."""
    return xml_fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)


def _xml_grant(body: bytes) -> str | None:
    try:
        root = parse_xml(body)
    except DefusedXmlException:
        raise BadRequest(400, "XML with a DOCTYPE or entities is not accepted") from None
    except ET.ParseError:
        raise BadRequest(400, "the XML body is malformed") from None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "grant_type":
            return (element.text or "").strip()
    return None


def grant_type(content_type: str | None, body: bytes) -> str:
    """The grant_type a request body carries, or BadRequest (400 malformed, 415 media type)."""
    media = media_type(content_type)
    if media not in BODY_TYPES:
        raise BadRequest(
            415, f"unsupported media type {media or '(none)'}; use one of {', '.join(BODY_TYPES)}"
        )
    if len(body) > MAX_BODY:
        raise BadRequest(413, f"request body larger than {MAX_BODY} bytes")
    if not body.strip():
        raise BadRequest(400, "the request body is empty; it must carry grant_type=jwt_token")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(400, "the request body is not UTF-8") from None
    grant: object
    if media.endswith("json"):
        try:
            data = load_json(text)
        except ValueError:
            raise BadRequest(400, "the JSON body is malformed") from None
        if isinstance(data, str):
            # The one SDK (partnercenterservices, generated from the REST spec) sends the
            # grant as a bare JSON string: "jwt_token".
            grant = data
        elif isinstance(data, dict):
            grant = data.get("grant_type")
        else:
            raise BadRequest(400, 'the JSON body must be an object (or the string "jwt_token")')
    elif media.endswith("xml"):
        grant = _xml_grant(body)
    else:
        grant = urllib.parse.parse_qs(text, keep_blank_values=True).get("grant_type", [None])[0]
    if grant is None:
        raise BadRequest(400, "grant_type is required and must be jwt_token")
    if grant != GRANT:
        raise BadRequest(400, f"unsupported grant_type {str(grant)[:40]!r}; only jwt_token")
    return GRANT


def parse_token_answer(content_type: str, body: bytes) -> dict[str, object]:
    """A 200 answer's fields, from JSON or XML; ValueError when it is neither (an HTML page)."""
    media = media_type(content_type)
    if media.endswith("json"):
        data = load_json(body)
        if not isinstance(data, dict):
            raise ValueError("200 but the JSON is not an object")
        return data
    if media.endswith("xml"):
        try:
            root = parse_xml(body)
        except (ET.ParseError, DefusedXmlException):
            raise ValueError("200 but the XML is malformed or has a DTD") from None
        fields: dict[str, object] = {}
        for element in root.iter():
            name = element.tag.rsplit("}", 1)[-1]
            if name in ("access_token", "token_type", "expires_in", "expires_on"):
                fields[name] = (element.text or "").strip()
        return fields
    raise ValueError(f"200 but not a JSON token ({media or 'no content type'})")


def _xml(root: str, fields: dict[str, object]) -> bytes:
    inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
    return f'<?xml version="1.0" encoding="utf-8"?><{root}>{inner}</{root}>'.encode()


def render_token(
    media: str,
    access_token: str,
    expires_in: object,
    token_type: str = "bearer",  # noqa: S107 - a token type, not a password
) -> bytes:
    fields = {"access_token": access_token, "token_type": token_type, "expires_in": expires_in}
    if media.endswith("xml"):
        return _xml("TokenResponse", fields)
    return json.dumps(fields).encode()


def render_error(media: str, status: int, description: str) -> bytes:
    """Partner Center's error shape: {"code", "description", "data", "source"}."""
    if media.endswith("xml"):
        return _xml("ApiFault", {"code": status, "description": description, "source": "PartnerFD"})
    return json.dumps(
        {"code": status, "description": description, "data": [], "source": "PartnerFD"}
    ).encode()


def content_type(media: str) -> str:
    return f"{media}; charset=utf-8"
