"""Where a configuration may point the daemons for a password, and which hosts may get one in the clear.

Checked by `jitctl apply` (and `--dry-run`, `diff`) before anything is written, each problem naming its
rule and item: a credential provider's `password_env` must start with `JIT_CREDENTIAL_ENV_PREFIX`
(default `JIT_CRED_`: a configuration cannot make a daemon send, say, `JIT_AMQP_URL`'s password to a
host); its `password_file` must lie under `JIT_CREDENTIAL_DIRECTORY`, or under the process's own
`${CREDENTIALS_DIRECTORY}/` (systemd LoadCredential=, a pod's mounted Secret), without `..`; and a host
with `verify_tls: false` may not use Basic, which would hand the password to whoever answers.
"""

from __future__ import annotations

import posixpath

from shared.config_file import ConfigFile
from shared.credentials import CREDENTIALS_PREFIXES
from shared.settings import Settings


def credential_problems(config: ConfigFile, settings: Settings) -> list[str]:
    problems = []
    prefix, directory = settings.credential_env_prefix, posixpath.normpath(settings.credential_directory)
    for p in config.credential_providers:
        if p.password_env and not p.password_env.startswith(prefix):
            problems.append(f"credential provider {p.id}: password_env {p.password_env} is refused: a password "
                            f"variable must start with {prefix} (JIT_CREDENTIAL_ENV_PREFIX)")
        if p.password_file and (why := _outside(p.password_file, directory)):
            problems.append(f"credential provider {p.id}: password_file {p.password_file} is refused: {why}")
    for app in config.applications:
        for host in app.hosts:
            if host.winrm is not None and host.winrm.transport == "basic" and not host.winrm.verify_tls:
                problems.append(f"host {host.address} of application {app.id}: Basic authentication with "
                                "verify_tls: false is refused (Basic only with the server's certificate verified)")
    return problems


def _outside(path: str, directory: str) -> str | None:
    for form in CREDENTIALS_PREFIXES:
        if path.startswith(form):
            rest = path.removeprefix(form)
            if not rest or rest.startswith("/") or ".." in rest.split("/"):
                return f"{form} must be followed by a file name inside that directory"
            return None
    rule = (f"a password file must be under {directory} (JIT_CREDENTIAL_DIRECTORY) or "
            "${CREDENTIALS_DIRECTORY}/")
    if not posixpath.isabs(path) or ".." in path.split("/"):
        return rule
    return None if posixpath.normpath(path).startswith(directory.rstrip("/") + "/") else rule
