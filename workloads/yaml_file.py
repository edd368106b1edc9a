"""Reading a YAML file a user wrote (a stack config, a search space): whatever its bytes,
either the document or one `YamlFileError` saying what is wrong, never a decoding,
recursion or integer-size traceback. The caller's own error names the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """Why a file is no YAML document (without its name: the caller's error gives it)."""


def read_yaml(
    path: Path, loader: type[yaml.SafeLoader] = yaml.SafeLoader, too_deep: str = "nested too deeply"
) -> Any:
    """The document in `path`, read with `loader` (a SafeLoader); `too_deep` is the
    message for nesting beyond what the parser can recurse into."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YamlFileError(f"cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte {raw[exc.start]:#04x} at offset {exc.start}"
        raise YamlFileError(f"not UTF-8 text ({where})") from None
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise YamlFileError(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlFileError(too_deep) from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        raise YamlFileError(f"not a usable YAML value: {exc}") from None
