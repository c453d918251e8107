"""Turn whatever pywinrm/requests raised into a RetryableWinRMError or a PermanentWinRMError.

Retryable: connection refused/reset/dropped, connect or read timeout, HTTP 5xx without SOAP
(WinRMTransportError), WSManFault TimedOut, s:Receiver InternalError, the MaxShellsPerUser quota
(MSFT_WmiError 2150859174), WinRMOperationTimeoutError, protocol assertion/parse errors, the
operation's deadline.
Permanent: HTTP 401, access denied (WSManFault 5 / 0x80070005 or w:AccessDenied), TLS certificate
failures, other s:Sender faults, HTTP 4xx, anything unrecognised.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.exceptions import WinRMError as PyWinRMError

from .errors import AccessDeniedError, AuthenticationError, PermanentWinRMError, RetryableWinRMError, TLSError
from .errors import WinRMError as AdapterError
from .shell import DeadlineExceeded

QUOTA_WMI_ERROR = 2150859174  # 0x803381A6: MaxShellsPerUser / MaxConcurrentOperationsPerUser exceeded
ACCESS_DENIED_CODES = (5, 0x80070005)


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _fault(exc: WSManFaultError, host: str, operation: str, detail: str) -> AdapterError:
    subcode = (exc.fault_subcode or "").rsplit(":", 1)[-1]
    if exc.wsman_fault_code in ACCESS_DENIED_CODES or subcode == "AccessDenied":
        return AccessDeniedError(host, operation, detail)
    if exc.wmierror_code == QUOTA_WMI_ERROR or subcode in ("TimedOut", "QuotaLimit"):
        return RetryableWinRMError(host, operation, detail)
    if (exc.fault_code or "").endswith("Receiver"):
        return RetryableWinRMError(host, operation, detail)
    return PermanentWinRMError(host, operation, detail)


def classify(exc: BaseException, host: str, operation: str, secret: str) -> AdapterError:
    """The adapter error for ``exc``; its message names host and operation and never holds ``secret``."""
    if isinstance(exc, AdapterError):
        return exc
    detail = _scrub(f"{type(exc).__name__}: {exc}", secret)
    if isinstance(exc, DeadlineExceeded):
        return RetryableWinRMError(host, operation, f"deadline exceeded: {exc}")
    if isinstance(exc, requests.exceptions.SSLError):
        return TLSError(host, operation, detail)
    if isinstance(exc, requests.exceptions.RequestException):  # refused, reset, dropped, timeouts
        return RetryableWinRMError(host, operation, detail)
    if isinstance(exc, InvalidCredentialsError):
        return AuthenticationError(host, operation, detail)
    if isinstance(exc, WSManFaultError):
        detail = _scrub(
            f"WSManFault {exc.fault_code} {exc.fault_subcode} wsmanfault={exc.wsman_fault_code} "
            f"wmierror={exc.wmierror_code}: {(exc.reason or '').strip()}", secret)
        return _fault(exc, host, operation, detail)
    if isinstance(exc, WinRMOperationTimeoutError):
        return RetryableWinRMError(host, operation, "WSMan OperationTimeout expired")
    if isinstance(exc, WinRMTransportError):
        if exc.code >= 500:
            return RetryableWinRMError(host, operation, _scrub(f"HTTP {exc.code} without a SOAP fault", secret))
        return PermanentWinRMError(host, operation, _scrub(f"HTTP {exc.code}", secret))
    if isinstance(exc, (AssertionError, StopIteration, ET.ParseError, ConnectionError, TimeoutError)):
        return RetryableWinRMError(host, operation, f"protocol error: {detail}")
    if isinstance(exc, PermissionError):  # requests-ntlm: the server offered no NTLM challenge
        return AuthenticationError(host, operation, detail)
    if isinstance(exc, PyWinRMError):
        return RetryableWinRMError(host, operation, detail)
    return PermanentWinRMError(host, operation, detail)
