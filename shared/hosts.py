"""One canonical form of a host address, so that every comparison of hosts agrees.

DNS names are case-insensitive and `web01.corp.example.` (fully qualified, with the root's dot) is the
same host as `web01.corp.example`. The configuration stores hosts in this form (`jitctl apply`),
jit-approval records each request's host in it, and every place that matches a request's host against
a configured host compares canonical forms.
"""

from __future__ import annotations


def canonical_host(address: str) -> str:
    """`address` stripped of surrounding whitespace and one trailing dot, in lower case."""
    host = address.strip().lower()
    if len(host) > 1 and host.endswith("."):
        host = host[:-1]
    return host
