"""Credential providers' passwords, read at run time from the variable or file that the configuration names.

Nothing here is cached, logged or returned in an error message: errors name the provider and the
*source* (variable or file name), never the value.

A `password_file` may start with `$CREDENTIALS_DIRECTORY/` (or `${CREDENTIALS_DIRECTORY}/`): the
directory is this process's own, from its environment. systemd's `LoadCredential=` puts each
credential in a directory that differs per unit instance and sets that variable; a Kubernetes pod
sets it to where its Secret is mounted. So one configuration, stored once in the database, serves
every daemon and replica. No other variable is expanded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"
CREDENTIALS_PREFIXES = ("$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/")


class CredentialError(Exception):
    pass


def password_path(provider_id: str, password_file: str, environ: Mapping[str, str]) -> Path:
    """The file to read: `password_file` itself, or under this process's `$CREDENTIALS_DIRECTORY`."""
    for prefix in CREDENTIALS_PREFIXES:
        if password_file.startswith(prefix):
            directory = environ.get(CREDENTIALS_DIRECTORY, "")
            if not directory or not Path(directory).is_absolute():
                raise CredentialError(
                    f"credential provider {provider_id!r}: password file {password_file} needs "
                    f"{CREDENTIALS_DIRECTORY} (set by systemd's LoadCredential=, or by the pod spec)")
            name = password_file.removeprefix(prefix)
            if not name or name.startswith("/") or ".." in name.split("/"):  # stays inside the directory
                raise CredentialError(f"credential provider {provider_id!r}: password file {password_file} "
                                      f"leaves {CREDENTIALS_DIRECTORY}")
            return Path(directory) / name
    return Path(password_file)


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
            value = password_path(provider_id, password_file, env).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise CredentialError(
                f"credential provider {provider_id!r}: cannot read password file {password_file}: {exc.strerror}"
            ) from None
        if value:
            return value
        raise CredentialError(f"credential provider {provider_id!r}: password file {password_file} is empty")
    raise CredentialError(f"credential provider {provider_id!r} names neither password_env nor password_file")
