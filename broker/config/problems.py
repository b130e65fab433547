"""pydantic's validation errors in the broker's words: the key path (`profiles.billing.client_id`,
never pydantic's `loc` tuple with list indexes and union tags), one plain sentence, and so the
line the key is written on (`Reader.problem`). Also: the keys that failed, so the checks across
keys can still run on the rest of a table (`valid_part`, `salvage`)."""

from __future__ import annotations

import difflib
import types
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from broker.config.read import Reader

Path = tuple[str, ...]
M = TypeVar("M", bound=BaseModel)
_TABLE = ("model_type", "model_attributes_type", "dict_type")
_NUMBER = ("float_type", "int_type", "greater_than_equal", "less_than_equal")
_TEXT = ("string_type", "string_pattern_mismatch", "string_too_short")
_LIST = ("tuple_type", "list_type", "too_short")


def _inner(annotation: Any) -> Any:
    """`X | None` → X; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _walk(root: Any, loc: Iterable[int | str]) -> tuple[FieldInfo | None, Any]:
    """The field of the last key of `loc` (None where unknown), and the type reached."""
    current: Any = root
    field: FieldInfo | None = None
    for part in loc:
        current = _inner(current)
        if get_origin(current) is dict:  # `part` is a key of it (a profile's name)
            current = get_args(current)[1]
        elif isinstance(part, int) or part == "[key]":
            continue  # an item of a list (its errors are the list's), or a dict's key
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None, None
            current = field.annotation
        else:
            return None, None
    return field, current


def key_path(loc: Iterable[int | str]) -> Path:
    """pydantic's loc without list indexes and dict-key markers: the key path as written."""
    return tuple(str(p) for p in loc if not isinstance(p, int) and p != "[key]")


def unknown_key(key: str, allowed: Iterable[str]) -> str:
    names = sorted(allowed)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key (allowed: {', '.join(names)})"


def _bounds(field: FieldInfo | None) -> tuple[float, float]:
    low, high = float("-inf"), float("inf")
    for item in field.metadata if field else ():
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


def _number(value: Any, field: FieldInfo | None) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, not {type(value).__name__}"
    low, high = _bounds(field)
    if not low <= value <= high:
        return f"must be between {low:g} and {high:g}, not {value:g}"
    return "must be a whole number"


def _choice(value: Any, field: FieldInfo | None) -> str:
    if not isinstance(value, str) or not value.strip():
        return "must be a non-empty string"
    annotation = _inner(field.annotation) if field else None
    choices = get_args(annotation) if get_origin(annotation) is Literal else ()
    return f"must be one of {', '.join(choices)}, not {value!r}"


def message(
    error: ErrorDetails, root: Any, unknown: Callable[[str], str] | None = None
) -> str | None:
    """One error's sentence, as the broker words it; None for an error that only repeats
    others (a list left empty because its items failed)."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "too_short" and value:
        return None
    context: dict[str, Any] = dict(error.get("ctx") or {})
    field, _ = _walk(root, loc)
    in_list = bool(loc) and isinstance(loc[-1], int)
    if kind == "config":
        text = str(context["message"])
        if context.get("entry") and in_list:
            text = f"entry {int(loc[-1]) + 1} ({value!r}): {text}"
        return text
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if unknown is not None:
            return unknown(key)
        holder = _inner(_walk(root, loc[:-1])[1])
        known = (
            holder.model_fields
            if isinstance(holder, type) and issubclass(holder, BaseModel)
            else ()
        )
        return unknown_key(key, known)
    if kind == "missing":
        extra = field.json_schema_extra if field else None
        return str(extra.get("missing", "required")) if isinstance(extra, dict) else "required"
    if kind in _TABLE:
        return "must be a table"
    if kind == "bool_type":
        return "must be true or false"
    if kind in _NUMBER:
        return _number(value, field)
    if kind == "literal_error":
        return _choice(value, field)
    if kind in _TEXT:
        return "must be a non-empty list of strings" if in_list else "must be a non-empty string"
    if kind in _LIST:
        return "must be a non-empty list of strings"
    return str(error["msg"])  # not expected from a TOML document; pydantic's words then


def report(
    r: Reader,
    error: ValidationError,
    root: Any,
    *,
    at: Callable[[Path], Path] = lambda path: path,
    unknown: Callable[[str], str] | None = None,
) -> set[Path]:
    """Every error of `error` as a problem (its path mapped by `at`). Returns the key paths that
    failed, as written in the document (before `at`)."""
    failed = set()
    for item in error.errors():
        path = key_path(item["loc"])
        text = message(item, root, unknown)
        if text is not None:
            r.problem(at(path), text)
        failed.add(path)
    return failed


def valid_part(raw: Any, path: Path, failed: set[Path]) -> dict[str, Any]:
    """The keys of the table at `path` whose values passed (all of them when none failed)."""
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if (*path, k) not in failed}


def salvage(model: type[M], raw: Any, path: Path, failed: set[Path]) -> M | None:
    """The table at `path` without its failed keys (their defaults instead), for the checks
    across keys; None when even that does not validate (a required key is missing)."""
    try:
        return model.model_validate(valid_part(raw, path, failed))
    except ValidationError:
        return None
