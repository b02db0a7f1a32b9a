"""Keeping secrets out of records: secret-named keys masked, secret environment values scrubbed.

Two kinds of secret reach what a run logs (params, tags, manifests, reports):

* a config or JSON key that names one (``api_key``, ``mapi_key``, ``token``, ``password``, ...):
  its value is replaced by ``"***"``;
* the value of a secret-looking environment variable (``MP_API_KEY``, ``PMG_MAPI_KEY``,
  ``MLFLOW_TRACKING_PASSWORD``, ...; 16 characters or more) appearing anywhere in a string.

No mlflow here: registry.py calls these on everything it is about to log.

Example:
    >>> secrets = secret_values()                         # [os.environ["MP_API_KEY"], ...]
    >>> redact({"query": {"api_key": "abc"}, "note": f"key {secrets[0]}"}, secrets)
    {'query': {'api_key': '***'}, 'note': 'key ***'}
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Config/JSON keys whose values are never logged, and environment variables whose values are scrubbed
# from everything logged (MP_API_KEY, PMG_MAPI_KEY, MLFLOW_TRACKING_PASSWORD, ...).
SECRET_KEY = re.compile(r"(^|[._-])(api_?key|mapi_key|token|secret|password|credentials?)$", re.IGNORECASE)
SECRET_ENV = re.compile(r"(^|_)(API_KEY|MAPI_KEY|KEY|TOKEN|SECRET|PASSWORD)$")
REDACTED = "***"
MIN_SECRET_LENGTH = 16  # shorter values are too likely to occur by chance in ordinary text


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (MP_API_KEY, ...) that must never be logged."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if SECRET_ENV.search(k) and len(v) >= MIN_SECRET_LENGTH]


def redact(obj: Any, secrets: list[str]) -> Any:
    """Replace secret-named keys' values and any occurrence of a secret value, recursively.

    Mappings come back as dicts and tuples as lists; other types pass through unchanged.
    """
    if isinstance(obj, Mapping):
        return {k: REDACTED if SECRET_KEY.search(str(k)) and v else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, REDACTED)
    return obj


def copy_scrubbed(src: Path, dst: Path, secrets: list[str]) -> None:
    """Copy a file for logging; text files have secret values replaced (binary files are copied)."""
    data = Path(src).read_bytes()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        shutil.copyfile(src, dst)
        return
    Path(dst).write_text(redact(text, secrets))


__all__ = ["REDACTED", "SECRET_ENV", "SECRET_KEY", "copy_scrubbed", "redact", "secret_values"]
