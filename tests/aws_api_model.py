"""The AWS API reference, read from botocore's service models, for the apply-time tests.

botocore ships each service's API model: for every request member its type, length and
count limits, pattern and enum, and the reference documentation AWS publishes from it
(`docs.aws.amazon.com/<service>/latest/APIReference`). `problems(value, "sagemaker",
"CreateModel", "ModelName")` says what the API would refuse in a value, as that service
would at `pulumi up`.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from typing import Any

import botocore.session
from botocore.model import Shape

# Java-style classes the models use that Python's `re` spells differently.
_SURROGATE_PAIRS = r"\uD800\uDC00-\uDBFF\uDFFF"  # "any supplementary character"
_UNICODE_CLASS = re.compile(r"^\(?\[((?:\\p\{[A-Z]\}|[^\]])*)\]\*\)?$")


@functools.cache
def _model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


def member(service: str, operation: str, path: str) -> Shape:
    """A request member: `path` is dotted, `[]` for a list's items."""
    shape = _model(service).operation_model(operation).input_shape
    for part in path.split("."):
        shape = shape.member if part == "[]" else shape.members[part]
    return shape


def documentation(service: str, operation: str, path: str) -> str:
    """The member's reference text, as plain text."""
    text = member(service, operation, path).documentation
    text = re.sub(r"<[^>]+>", "", re.sub(r"</?(p|li|ul|br)\b[^>]*>", " ", text))
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def _unicode_class_matches(body: str, value: str) -> bool:
    """`[\\p{L}\\p{Z}_.:/=+\\-@]*`: each character is in one of the categories or literals."""
    categories = set(re.findall(r"\\p\{([A-Z])\}", body))
    literals = set(re.sub(r"\\(.)", r"\1", re.sub(r"\\p\{[A-Z]\}", "", body)))
    return all(unicodedata.category(c)[0] in categories or c in literals for c in value)


def pattern_matches(pattern: str, value: str) -> bool:
    """Whether the whole value matches an API model pattern (AWS anchors every pattern)."""
    pattern = pattern.removeprefix("^").removesuffix("$")
    unicode_class = _UNICODE_CLASS.match(pattern)
    if unicode_class and "\\p{" in pattern:
        return _unicode_class_matches(unicode_class.group(1), value)
    flags = 0
    if "(?i)" in pattern:
        pattern, flags = pattern.replace("(?i)", ""), re.IGNORECASE
    pattern = pattern.replace(_SURROGATE_PAIRS, r"\U00010000-\U0010FFFF")
    pattern = pattern.replace(r"\p{Print}", r"[\x20-\x7e]")
    return re.fullmatch(pattern, value, flags) is not None


def problems(value: Any, service: str, operation: str, path: str) -> list[str]:
    """What the API's model refuses in `value` for that member (empty: it accepts it)."""
    return _problems(value, member(service, operation, path), f"{service}:{operation}.{path}")


def _problems(value: Any, shape: Shape, where: str) -> list[str]:
    meta = shape.metadata
    out = []
    if shape.type_name == "string":
        text = str(value)
        if len(text) < meta.get("min", 0) or len(text) > meta.get("max", len(text)):
            out.append(
                f"{where} takes {meta.get('min', 0)}-{meta.get('max')} characters; "
                f"{len(text)} in {text[:80]!r}"
            )
        if "pattern" in meta and not pattern_matches(meta["pattern"], text):
            out.append(f"{where} must match {meta['pattern']}; {text!r} does not")
        if shape.enum and text not in shape.enum:
            out.append(f"{where} is one of {shape.enum}; not {text!r}")
    elif shape.type_name in ("integer", "long"):
        number = int(value)
        if number < meta.get("min", number) or number > meta.get("max", number):
            out.append(f"{where} is {meta.get('min')}..{meta.get('max')}; not {number}")
    elif shape.type_name in ("list", "map"):
        count = len(value)
        if count < meta.get("min", 0) or count > meta.get("max", count):
            out.append(f"{where} takes {meta.get('min', 0)}-{meta.get('max')} items; {count}")
        if shape.type_name == "map":  # each key and value, as their own shapes say
            for key, item in value.items():
                out += _problems(key, shape.key, f"{where} key")
                out += _problems(item, shape.value, f"{where}[{key!r}]")
    return out
