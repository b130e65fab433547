"""Partner Center's wire format to the byte: which request bodies carry a grant, which are
refused with which status, how a 200 answer is read (JSON or XML, namespaced, empty elements),
and the exact JSON and XML the sandbox and the mirror write."""

from __future__ import annotations

import json

import pytest

from broker.core.upstream import pcformat
from broker.core.upstream.pcformat import BadRequest, grant_type, parse_token_answer

UTF16_DECL = '<?xml version="1.0" encoding="utf-16"?>'


def refused(content_type: str | None, body: bytes) -> tuple[int, str]:
    with pytest.raises(BadRequest) as raised:
        grant_type(content_type, body)
    assert str(raised.value) == raised.value.description
    return raised.value.status, raised.value.description


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"grant_type": "jwt_token"}'),
        ("Text/JSON; charset=utf-8", b'{"grant_type": "jwt_token", "other": 1}'),
        ("application/json", b'\xef\xbb\xbf{"grant_type": "jwt_token"}'),  # a BOM
        ("application/xml", b"<r><grant_type>jwt_token</grant_type></r>"),
        ("text/xml", b"<r><grant_type>\n  jwt_token  </grant_type></r>"),
        ("application/xml", b'<p:r xmlns:p="urn:x"><p:grant_type>jwt_token</p:grant_type></p:r>'),
        ("application/x-www-form-urlencoded", b"grant_type=jwt_token"),
        ("application/x-www-form-urlencoded", b"a=&grant_type=jwt_token&grant_type=x"),
    ],
)
def test_every_body_type_carries_the_grant(content_type: str, body: bytes) -> None:
    assert grant_type(content_type, body) == "jwt_token"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "description"),
    [
        (
            None,
            b"grant_type=jwt_token",
            415,
            "unsupported media type (none); use one of application/json, text/json, "
            "application/xml, text/xml, application/x-www-form-urlencoded",
        ),
        ("text/plain", b"grant_type=jwt_token", 415, "unsupported media type text/plain; use"),
        ("application/json", b"", 400, "the request body is empty; it must carry"),
        ("application/json", b" \r\n\t", 400, "the request body is empty"),
        ("application/json", b"\xff\xfe{", 400, "the request body is not UTF-8"),
        ("application/json", b"{", 400, "the JSON body is malformed"),
        ("application/json", b'["grant_type"]', 400, "the JSON body must be an object"),
        ("application/json", b"{}", 400, "grant_type is required and must be jwt_token"),
        ("application/xml", b"<r><a>1</a></r>", 400, "grant_type is required"),
        ("application/xml", b"<r><grant_type>", 400, "the XML body is malformed"),
        ("application/x-www-form-urlencoded", b"scope=x", 400, "grant_type is required"),
        (
            "application/json",
            b'{"grant_type": "client_credentials"}',
            400,
            "unsupported grant_type 'client_credentials'; only jwt_token",
        ),
        (
            "application/json",
            b'{"grant_type": "' + b"x" * 100 + b'"}',
            400,
            "unsupported grant_type '" + "x" * 40 + "'; only jwt_token",
        ),
        (
            "application/xml",
            b"<r><grant_type></grant_type></r>",
            400,
            "unsupported grant_type ''; only jwt_token",
        ),
    ],
)
def test_bad_bodies_are_refused_with_partner_centers_status(
    content_type: str | None, body: bytes, status: int, description: str
) -> None:
    got_status, got = refused(content_type, body)
    assert got_status == status
    assert got.startswith(description), got


@pytest.mark.parametrize(
    "body",
    [
        b'<!DOCTYPE r [<!ENTITY x "jwt_token">]><r><grant_type>&x;</grant_type></r>',
        b"<!DOCTYPE r><r><grant_type>jwt_token</grant_type></r>",
        b'<!DOCTYPE r SYSTEM "file:///etc/passwd"><r><grant_type>jwt_token</grant_type></r>',
    ],
)
def test_xml_with_a_doctype_or_entities_is_refused(body: bytes) -> None:
    assert refused("application/xml", body) == (
        400,
        "XML with a DOCTYPE or entities is not accepted",
    )


def test_a_utf16_body_is_refused_before_its_doctype_is_read() -> None:
    body = f"{UTF16_DECL}<!DOCTYPE r><r><grant_type>jwt_token</grant_type></r>".encode("utf-16")
    assert refused("text/xml", body) == (400, "the request body is not UTF-8")


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b'"jwt_token"', "jwt_token"),
        (b'"client_credentials"', "unsupported grant_type 'client_credentials'; only jwt_token"),
        (b"[1]", 'the JSON body must be an object (or the string "jwt_token")'),
        (b"NaN", 'the JSON body must be an object (or the string "jwt_token")'),
        (b"[" * 100_00, "the JSON body is malformed"),
    ],
)
def test_a_bare_json_string_carries_the_grant_as_the_sdk_sends_it(body: bytes, outcome: str):
    if outcome == "jwt_token":
        assert grant_type("application/json", body) == outcome
    else:
        assert refused("application/json", body) == (400, outcome)


def test_a_body_over_64_kib_is_413_before_it_is_parsed() -> None:
    limit = pcformat.MAX_BODY
    assert limit == 64 * 1024
    at_limit = b"grant_type=jwt_token&pad=" + b"x" * (limit - 25)
    assert len(at_limit) == limit and grant_type("application/x-www-form-urlencoded", at_limit)
    over = b"{" * (limit + 1)  # would be malformed too: the size is checked first
    assert refused("application/json", over) == (413, "request body larger than 65536 bytes")


def test_media_type_and_content_type() -> None:
    assert pcformat.media_type("Text/XML; charset=utf-8") == "text/xml"
    assert pcformat.media_type(" application/json ") == "application/json"
    assert pcformat.media_type(None) == ""
    assert pcformat.content_type("text/xml") == "text/xml; charset=utf-8"


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/json"),
        ("application/xml", "application/xml"),
        ("text/*", "text/json"),
        ("text/html", None),
    ],
)
def test_response_type_negotiates_the_four_answer_types(accept, media) -> None:
    assert pcformat.response_type(accept) == media


def test_a_json_answer_is_read_as_is() -> None:
    body = b'{"access_token": "t", "expires_in": 60, "x": [1]}'
    assert parse_token_answer("application/json; charset=utf-8", body) == {
        "access_token": "t",
        "expires_in": 60,
        "x": [1],
    }
    assert parse_token_answer("text/json", b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError, match="200 but the JSON is not an object"):
        parse_token_answer("application/json", b"[1]")


def test_an_xml_answer_yields_the_four_token_fields_stripped() -> None:
    body = (
        b'<?xml version="1.0"?><TokenResponse xmlns="http://schemas.example/pc">'
        b"<access_token> tok-1 </access_token><token_type>bearer</token_type>"
        b"<expires_in>\n3599\n</expires_in><expires_on/><other>x</other></TokenResponse>"
    )
    assert parse_token_answer("application/xml", body) == {
        "access_token": "tok-1",
        "token_type": "bearer",
        "expires_in": "3599",
        "expires_on": "",
    }


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("text/xml", b"<TokenResponse><access_token>", "200 but the XML is malformed or has a DTD"),
        ("text/html", b"<html>sign in</html>", "200 but not a JSON token (text/html)"),
        ("", b"{}", "200 but not a JSON token (no content type)"),
        (
            "application/xml",
            b"<!DOCTYPE t><t><access_token>x</access_token></t>",
            "200 but the XML is malformed or has a DTD",
        ),
        (
            "application/xml",
            f"{UTF16_DECL}<!DOCTYPE t><t><access_token>x</access_token></t>".encode("utf-16"),
            "200 but the XML is malformed or has a DTD",
        ),
    ],
)
def test_answers_that_are_not_token_documents_are_value_errors(
    content_type: str, body: bytes, message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        parse_token_answer(content_type, body)
    assert str(raised.value) == message


def test_token_answers_are_written_exactly_as_partner_center_does() -> None:
    assert json.loads(pcformat.render_token("application/json", "tok", "3600")) == {
        "access_token": "tok",
        "token_type": "bearer",
        "expires_in": "3600",
    }
    assert pcformat.render_token("text/xml", "a<b&c", 60, "pop") == (
        b'<?xml version="1.0" encoding="utf-8"?><TokenResponse>'
        b"<access_token>a&lt;b&amp;c</access_token><token_type>pop</token_type>"
        b"<expires_in>60</expires_in></TokenResponse>"
    )


def test_errors_are_written_in_partner_centers_shape() -> None:
    assert json.loads(pcformat.render_error("text/json", 400, "bad <grant>")) == {
        "code": 400,
        "description": "bad <grant>",
        "data": [],
        "source": "PartnerFD",
    }
    assert pcformat.render_error("application/xml", 415, "bad <type>") == (
        b'<?xml version="1.0" encoding="utf-8"?><ApiFault><code>415</code>'
        b"<description>bad &lt;type&gt;</description><source>PartnerFD</source></ApiFault>"
    )


def test_what_is_written_is_read_back() -> None:
    for media in pcformat.RESPONSE_TYPES:
        body = pcformat.render_token(media, "tok-9", "120")
        fields = parse_token_answer(media, body)
        assert {k: str(v) for k, v in fields.items()} == {
            "access_token": "tok-9",
            "token_type": "bearer",
            "expires_in": "120",
        }


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"grant_type="),
        ("application/x-www-form-urlencoded", b"scope=x&grant_type="),
        ("application/xml", b"<r><grant_type/></r>"),
        ("application/json", b'{"grant_type": ""}'),
    ],
)
def test_an_empty_grant_type_is_named_unsupported_not_missing(
    content_type: str, body: bytes
) -> None:
    """A grant_type that is sent but empty is answered as Partner Center does, the same in
    every body type: an unsupported grant (''), not a missing one."""
    assert refused(content_type, body) == (400, "unsupported grant_type ''; only jwt_token")


@pytest.mark.parametrize("body", [b"[1]", b'"jwt_token"', b"3599", b"null"])
def test_a_json_answer_that_is_not_an_object_is_refused_word_for_word(body: bytes) -> None:
    with pytest.raises(ValueError) as raised:
        parse_token_answer("application/json", body)
    assert str(raised.value) == "200 but the JSON is not an object"


def test_a_namespace_with_a_closing_brace_is_malformed_xml() -> None:
    """The tag matching keeps what follows the one '}' of `{uri}local`; a URI that would bring a
    second one is refused by the parser (tools/mutation.py's pcformat equivalents rely on it)."""
    body = b'<r xmlns="urn:a}grant_type"><grant_type>jwt_token</grant_type></r>'
    assert refused("application/xml", body) == (400, "the XML body is malformed")
