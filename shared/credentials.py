"""Credential providers' passwords, read at run time from the variable or file that the configuration names.

Nothing here is cached, logged or returned in an error message: errors name the provider and the
*source* (variable or file name), never the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


class CredentialError(Exception):
    pass


def resolve_password(provider_id: str, password_env: str | None, password_file: str | None,
                     environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if password_env:
        value = env.get(password_env)
        if value:
            return value
        if not password_file:
            raise CredentialError(f"credential provider {provider_id!r}: variable {password_env} is not set")
    if password_file:
        try:
            value = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CredentialError(
                f"credential provider {provider_id!r}: cannot read password file {password_file}: {exc.strerror}"
            ) from None
        if value:
            return value
        raise CredentialError(f"credential provider {provider_id!r}: password file {password_file} is empty")
    raise CredentialError(f"credential provider {provider_id!r} names neither password_env nor password_file")
