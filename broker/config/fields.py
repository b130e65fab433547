"""The building blocks of the config schema (`schema.py`, `profile_schema.py`): the `setting()`
that declares one key, the `Section` every table's model derives from, and the TOML value types.

A value type checks what TOML gave (strictly: "60" is not a number, 1 is not true) and keeps it in
its TOML shape; turning it into what the broker runs on (a `Listen`, a gid, a `Secret` read from a
file) is the readers' job. Errors of their own carry the broker's wording (`fail`); pydantic's
built-in ones are worded in `problems.py`.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Annotated, Any, Literal, NoReturn

from annotated_types import MinLen
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from broker.config.listen import parse_listen
from broker.config.secret import Secret

Reload = Literal["live", "restart"]


def setting(
    default: Any,
    meaning: str,
    *,
    restart: bool = False,
    ge: float | None = None,
    le: float | None = None,
    missing: str | None = None,
    attribute: str | None = None,
) -> Any:
    """One key: its default (`...`: required), bounds, meaning (one line) and whether a reload
    applies it (`restart=True`: only a restart does). `missing`: the message when a required key
    is absent; `attribute`: the settings attribute it becomes, when not its own name."""
    extra: dict[str, Any] = {"reload": "restart" if restart else "live"}
    if missing is not None:
        extra["missing"] = missing
    if attribute is not None:
        extra["attribute"] = attribute
    return Field(default, description=meaning, json_schema_extra=extra, ge=ge, le=le)


class Section(BaseModel):
    """A TOML table: unknown keys are errors, a validated table never changes, and a value that
    fails never appears in pydantic's own text of an error (it may be a secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def fail(message: str, **context: Any) -> NoReturn:
    """Refuse a value with the broker's own words (`problems.py` passes them through)."""
    raise PydanticCustomError("config", "{message}", {"message": message, **context})


# -- numbers, flags, strings -----------------------------------------------------------------


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Number = Annotated[float, Strict()]  # an int or a float; never a bool or a string
Whole = Annotated[int, BeforeValidator(_integral), Strict()]  # 2.0 is 2; 1.5 is refused
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), StringConstraints(pattern=r"\S")]  # not empty, not blank
Strings = Annotated[tuple[StrictStr, ...], MinLen(1)]  # a non-empty list of strings


def _secret(value: Any) -> Secret:
    if not isinstance(value, str) or not value.strip():
        fail("must be a non-empty string")
    return Secret(value)


# An inline secret: held as `Secret` from the moment it is read; shown as "***" if ever dumped.
SecretText = Annotated[
    Secret,
    PlainValidator(_secret),
    PlainSerializer(lambda _: "***", return_type=str),
    WithJsonSchema({"type": "string", "writeOnly": True}),
]


# -- formats ---------------------------------------------------------------------------------

_URL = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?")


def _url(text: str) -> str:
    if not _URL.fullmatch(text):
        fail(f"must be an http(s) URL, not {text!r}")
    return text


Url = Annotated[Text, AfterValidator(_url)]  # plain http off loopback: checked with its table

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def header_pair(text: str) -> tuple[str, str]:
    """ "Name: value" as (name, value); ValueError when it is not one."""
    name, sep, value = text.partition(":")
    if not sep or not _HEADER_NAME.fullmatch(name.strip()) or not value.strip():
        raise ValueError(text)
    return name.strip(), value.strip()


def _header(text: str) -> str:
    try:
        header_pair(text)
    except ValueError:
        fail(f"must look like 'Name: value', not {text!r}")
    return text


Header = Annotated[Text, AfterValidator(_header)]


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as e:
        fail(str(e), entry=True)  # problems.py says which entry
    return text


Listens = Annotated[tuple[Annotated[StrictStr, AfterValidator(_listen)], ...], MinLen(1)]


def _octal(value: Any) -> str:
    """A file mode written as an octal string ("0660"); never world-accessible."""
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        fail('must be an octal mode string such as "0660"')
    if int(value, 8) & 0o007:
        fail(f"{value} would let any local user in; others get no access")
    return value


OctalMode = Annotated[str, BeforeValidator(_octal)]


def _ids(kind: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | str) and not isinstance(v, bool) for v in value
        ):
            fail(f"must be a list of {kind} ids or names")
        return value

    return check


def _one_id(value: Any) -> Any:
    _ids("group")([value])
    return value


UserIds = Annotated[tuple[int | str, ...], BeforeValidator(_ids("user"))]  # [] is allowed
GroupIds = Annotated[tuple[int | str, ...], BeforeValidator(_ids("group"))]
GroupId = Annotated[int | str, BeforeValidator(_one_id)]

_PROXY_URL = re.compile(
    r"http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?|http://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?/?"
)


def _proxy(text: str) -> str:
    """A forward proxy's http://HOST:PORT, without credentials (they go in a file)."""
    shape = "must look like http://HOST:PORT (a forward proxy)"
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # a broken [IPv6] host
        fail(shape)
    if parts.username is not None or parts.password is not None:
        fail(
            "no credentials in the URL: put user:password in a file named by "
            "server.upstream_proxy_credentials_file"
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        fail(shape)
    if not _PROXY_URL.fullmatch(text) or not parts.hostname:
        fail(shape)
    return text


ProxyUrl = Annotated[Text, AfterValidator(_proxy)]

_REDIS_URL = re.compile(r"(rediss?://[^\s/?#]+(/\d{1,2})?|unix:///[^\s?#]+)(\?[^\s#]*)?")


def _redis_url(url: str) -> str:
    if not _REDIS_URL.fullmatch(url):
        fail(
            "must be redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or "
            "unix:///PATH (credentials go in password_file, not in the URL)"
        )
    if "@" in url.split("?")[0]:
        fail("put the password in password_file, not in the URL")
    return url


RedisUrl = Annotated[Text, AfterValidator(_redis_url)]


def _prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", text):
        fail("letters, digits, '_', '.', ':', '-' (at most 64)")
    return text


Prefix = Annotated[Text, AfterValidator(_prefix)]
