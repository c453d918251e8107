"""Error classification of what pywinrm and requests raise (no network: the exceptions are built here)."""

from __future__ import annotations

import pytest
import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)

from shared.winrm import InvalidNameError, MembershipClient, PermanentWinRMError, RetryableWinRMError, WinRMError
from shared.winrm.classify import classify
from shared.winrm.errors import AccessDeniedError, AuthenticationError, TLSError
from shared.winrm.shell import CLEANUP_GRACE_SEC, DeadlineExceeded


def _fault(code: str, sub: str, wsman: int | None = None, wmi: int | None = None) -> WSManFaultError:
    return WSManFaultError(500, "Bad HTTP response returned from server. Code 500", "<x/>", "reason", code, sub,
                           wsman, wmi)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.ConnectionError("refused"), RetryableWinRMError),
        (requests.exceptions.ConnectTimeout("slow"), RetryableWinRMError),
        (requests.exceptions.ReadTimeout("slow"), RetryableWinRMError),
        (requests.exceptions.SSLError("bad cert"), TLSError),
        (InvalidCredentialsError("rejected"), AuthenticationError),
        (WinRMOperationTimeoutError(), RetryableWinRMError),
        (WinRMTransportError("http", 500, "oops"), RetryableWinRMError),
        (WinRMTransportError("http", 503, ""), RetryableWinRMError),
        (WinRMTransportError("http", 404, ""), PermanentWinRMError),
        (_fault("s:Receiver", "w:TimedOut", 2150858793), RetryableWinRMError),
        (_fault("s:Receiver", "w:InternalError", 1359), RetryableWinRMError),
        (_fault("s:Receiver", "w:InternalError", None, 2150859174), RetryableWinRMError),
        (_fault("s:Receiver", "w:InternalError", 2147942405), AccessDeniedError),
        (_fault("s:Sender", "w:AccessDenied", 5), AccessDeniedError),
        (_fault("s:Sender", "w:InvalidSelectors", 2150858843), PermanentWinRMError),
        (AssertionError(), RetryableWinRMError),
        (StopIteration(), RetryableWinRMError),
        (DeadlineExceeded("no time left"), RetryableWinRMError),
    ],
)
def test_classification(exc: BaseException, expected: type[WinRMError]) -> None:
    error = classify(exc, "h:5986", "add_member", "pw")
    assert type(error) is expected
    assert error.retryable is issubclass(expected, RetryableWinRMError)
    assert str(error).startswith("winrm add_member on h:5986 failed: ")


def test_secret_is_scrubbed() -> None:
    error = classify(requests.exceptions.ConnectionError("oops p@ss-w0rd leaked"), "h", "op", "p@ss-w0rd")
    assert "p@ss-w0rd" not in str(error) and "***" in str(error)


def test_error_hierarchy() -> None:
    assert issubclass(InvalidNameError, PermanentWinRMError) and issubclass(InvalidNameError, ValueError)
    assert RetryableWinRMError("h", "op", "x").retryable and not PermanentWinRMError("h", "op", "x").retryable


def test_client_timeouts_are_checked() -> None:
    with pytest.raises(ValueError):
        MembershipClient(operation_timeout_sec=5, read_timeout_sec=5)
    with pytest.raises(ValueError):
        MembershipClient(max_shells_per_host=0)


def test_max_call_seconds_is_the_deadline_plus_a_fixed_slack() -> None:
    client = MembershipClient(deadline_sec=7.5)
    assert client.max_call_seconds == 7.5 + client.deadline_slack_sec
    assert CLEANUP_GRACE_SEC < client.deadline_slack_sec <= 5.0
    assert MembershipClient(deadline_sec=60).max_call_seconds - 60 == client.max_call_seconds - 7.5
    assert "deadline exceeded" in str(classify(DeadlineExceeded("x"), "h", "add_member", "pw"))
