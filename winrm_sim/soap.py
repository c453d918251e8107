"""WS-Management SOAP: read the requests pywinrm sends, write answers shaped like real Windows ones.

Response envelopes (prefixes s:/a:/x:/w:/rsp:/p:, namespace declarations per action, header order
Action, MessageID, To, RelatesTo) are modelled on the recorded Windows responses in
``shared/fixtures/windows-recorded``: ``test_winrs_standard.yml`` (Create, Command, Receive, Signal,
Delete), ``test_winrs_environment.yml`` (rsp:Environment echoed in the Create answer),
``test_winrs_stderr_rc.yml`` (stderr stream, ExitCode 1), ``test_winrs_operation_timeout.yml``
(w:TimedOut fault), ``test_winrs_bad_cmd_id.yml`` (w:InvalidSelectors fault); the MSFT_WmiError
quota fault follows pywinrm's ``winrm/tests/test_exceptions.py``.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "e": "http://schemas.xmlsoap.org/ws/2004/08/eventing",
    "n": "http://schemas.xmlsoap.org/ws/2004/09/enumeration",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
}
SHELL = NS["rsp"]
CMD_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"

ACTIONS = {
    f"{TRANSFER}/Create": "Create",
    f"{TRANSFER}/Delete": "Delete",
    f"{SHELL}/Command": "Command",
    f"{SHELL}/Receive": "Receive",
    f"{SHELL}/Signal": "Signal",
    f"{SHELL}/Send": "Send",
}
_RESPONSE_ACTION = {
    "Create": f"{TRANSFER}/CreateResponse",
    "Delete": f"{TRANSFER}/DeleteResponse",
    "Command": f"{SHELL}/CommandResponse",
    "Receive": f"{SHELL}/ReceiveResponse",
    "Signal": f"{SHELL}/SignalResponse",
}
# Which prefixes each real response declares, in order.
_DECLARED = {
    "Create": "s a x w rsp p",
    "Command": "s a x w rsp p",
    "Receive": "s a w rsp p",
    "Signal": "s a x w rsp p",
    "Delete": "s a w p",
    "fault": "s a x e n w p",
}


class BadRequest(Exception):
    """Not a WS-Man message we understand."""


@dataclass
class Request:
    action: str  # Create, Command, Receive, Signal, Delete, Send, or the raw URI if unknown
    message_id: str
    shell_id: str | None
    operation_timeout: float
    body: ET.Element
    env: dict[str, str] = field(default_factory=dict)
    command: str = ""
    arguments: str = ""
    command_id: str | None = None
    idle_timeout: float | None = None  # Create: the shell's rsp:IdleTimeOut, if the client gave one


def _duration_seconds(text: str | None, default: float = 60.0) -> float:
    match = re.fullmatch(r"PT([0-9.]+)S", (text or "").strip())
    return float(match.group(1)) if match else default


def _idle_timeout(text: str | None) -> float | None:
    """rsp:IdleTimeOut as an xs:duration (PT90S, as in the recorded Windows requests). Anything else, such as
    the bare number pywinrm passes through when given an int, counts as not given (Windows' two-hour
    default): what Windows does with it is unverified, and a client that relied on it would leak shells."""
    return _duration_seconds(text, default=0.0) or None


def parse_request(data: bytes) -> Request:
    try:
        root = ET.fromstring(data)  # noqa: S314 - test double on loopback; expat refuses external entities
    except ET.ParseError as exc:
        raise BadRequest(str(exc)) from exc
    header = root.find("s:Header", NS)
    body = root.find("s:Body", NS)
    if header is None or body is None:
        raise BadRequest("not a SOAP 1.2 envelope")
    action_uri = (header.findtext("a:Action", "", NS) or "").strip()
    shell_id = None
    for selector in header.iterfind("w:SelectorSet/w:Selector", NS):
        if selector.get("Name") == "ShellId":
            shell_id = (selector.text or "").strip()
    req = Request(
        action=ACTIONS.get(action_uri, action_uri),
        message_id=(header.findtext("a:MessageID", "", NS) or "").strip(),
        shell_id=shell_id,
        operation_timeout=_duration_seconds(header.findtext("w:OperationTimeout", None, NS)),
        body=body,
    )
    if req.action == "Create":
        for var in body.iterfind("rsp:Shell/rsp:Environment/rsp:Variable", NS):
            req.env[var.get("Name", "")] = var.text or ""
        req.idle_timeout = _idle_timeout(body.findtext("rsp:Shell/rsp:IdleTimeOut", None, NS))
    elif req.action == "Command":
        req.command = (body.findtext("rsp:CommandLine/rsp:Command", "", NS) or "").strip()
        req.arguments = " ".join(a.text or "" for a in body.iterfind("rsp:CommandLine/rsp:Arguments", NS))
    elif req.action == "Receive":
        stream = body.find("rsp:Receive/rsp:DesiredStream", NS)
        req.command_id = stream.get("CommandId") if stream is not None else None
    elif req.action == "Signal":
        signal = body.find("rsp:Signal", NS)
        req.command_id = signal.get("CommandId") if signal is not None else None
    return req


def new_id() -> str:
    return str(uuid.uuid4()).upper()


def _envelope(kind: str, action_uri: str, relates_to: str, body: str) -> bytes:
    declared = " ".join(f'xmlns:{p}="{NS[p]}"' for p in _DECLARED[kind].split())
    return (
        f'<s:Envelope xml:lang="en-US" {declared}><s:Header>'
        f"<a:Action>{action_uri}</a:Action><a:MessageID>uuid:{new_id()}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To><a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def create_response(req: Request, shell_id: str, address: str, owner: str, client_ip: str) -> bytes:
    env = ""
    if req.env:
        env = "<rsp:Environment>" + "".join(
            f"<rsp:Variable Name={quoteattr(k)}>{escape(v)}</rsp:Variable>" for k, v in req.env.items()
        ) + "</rsp:Environment>"
    body = (
        f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{CMD_URI}</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet></a:ReferenceParameters>'
        f'</x:ResourceCreated><rsp:Shell xmlns:rsp="{SHELL}"><rsp:ShellId>{shell_id}</rsp:ShellId>'
        f"<rsp:ResourceUri>{CMD_URI}</rsp:ResourceUri><rsp:Owner>{escape(owner)}</rsp:Owner>"
        f"<rsp:ClientIP>{escape(client_ip)}</rsp:ClientIP>{env}<rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
        "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
        "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime><rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity>"
        "</rsp:Shell>"
    )
    return _envelope("Create", _RESPONSE_ACTION["Create"], req.message_id, body)


def command_response(req: Request, command_id: str) -> bytes:
    body = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
    return _envelope("Command", _RESPONSE_ACTION["Command"], req.message_id, body)


def receive_response(req: Request, command_id: str, stdout: bytes, stderr: bytes, exit_code: int) -> bytes:
    cid = quoteattr(command_id)
    parts = []
    for name, data in (("stdout", stdout), ("stderr", stderr)):
        if data:
            parts.append(f'<rsp:Stream Name="{name}" CommandId={cid}>{base64.b64encode(data).decode()}</rsp:Stream>')
    parts += [f'<rsp:Stream Name="{name}" CommandId={cid} End="true"></rsp:Stream>' for name in ("stdout", "stderr")]
    parts.append(
        f'<rsp:CommandState CommandId={cid} State="{SHELL}/CommandState/Done">'
        f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
    )
    body = "<rsp:ReceiveResponse>" + "".join(parts) + "</rsp:ReceiveResponse>"
    return _envelope("Receive", _RESPONSE_ACTION["Receive"], req.message_id, body)


def signal_response(req: Request) -> bytes:
    return _envelope("Signal", _RESPONSE_ACTION["Signal"], req.message_id, "<rsp:SignalResponse/>")


def delete_response(req: Request) -> bytes:
    return _envelope("Delete", _RESPONSE_ACTION["Delete"], req.message_id, "")


@dataclass(frozen=True)
class Fault:
    """A WSManFault (HTTP 500): SOAP code, WS-Man subcode, reason, and the Windows error code."""

    code: str  # s:Sender | s:Receiver
    subcode: str  # w:TimedOut, w:InvalidSelectors, w:InternalError, w:AccessDenied, ...
    reason: str
    wsman_code: int | None = None
    wmi_code: int | None = None
    fault_detail: str | None = None


FAULTS = {
    "TimedOut": Fault("s:Receiver", "w:TimedOut",
                      "The WS-Management service cannot complete the operation within the time specified in "
                      "OperationTimeout.  ", wsman_code=2150858793),
    "InternalError": Fault("s:Receiver", "w:InternalError", "An internal error occurred. ", wsman_code=1359),
    "AccessDenied": Fault("s:Sender", "w:AccessDenied", "Access is denied. ", wsman_code=5),
    "Quota": Fault("s:Receiver", "w:InternalError",
                   "The WS-Management service cannot process the request. This user is allowed a maximum "
                   "number of {max} concurrent shells, which has been exceeded. Close existing shells or raise "
                   "the quota for this user. ", wmi_code=2150859174),
    "InvalidSelectors": Fault("s:Sender", "w:InvalidSelectors",
                              "The WS-Management service cannot process the request because the request "
                              "contained invalid selectors for the resource. ", wsman_code=2150858843,
                              fault_detail="http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/"
                              "UnexpectedSelectors"),
    "ActionNotSupported": Fault("s:Sender", "a:ActionNotSupported",
                                "The action is not supported by the service. ", wsman_code=2150858771),
}


def fault_response(relates_to: str, fault: Fault, machine: str, max_shells: int = 30) -> bytes:
    reason = fault.reason.replace("{max}", str(max_shells))
    detail = f"<w:FaultDetail>{fault.fault_detail}</w:FaultDetail>" if fault.fault_detail else ""
    if fault.wmi_code is not None:
        detail += (
            '<p:MSFT_WmiError b:IsCIM_Error="true" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns:b="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd" '
            'xmlns:p="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError" '
            'xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xsi:type="p:MSFT_WmiError_Type">'
            '<p:CIMStatusCode xsi:type="cim:cimUnsignedInt">27</p:CIMStatusCode>'
            f'<p:Message xsi:type="cim:cimString">{escape(reason)}</p:Message>'
            f'<p:MessageID xsi:type="cim:cimString">HRESULT 0x{fault.wmi_code:x}</p:MessageID>'
            '<p:error_Category xsi:type="cim:cimUnsignedInt">30</p:error_Category>'
            f'<p:error_Code xsi:type="cim:cimUnsignedInt">{fault.wmi_code}</p:error_Code>'
            '<p:error_Type xsi:type="cim:cimString">HRESULT</p:error_Type>'
            f'<p:error_WindowsErrorMessage xsi:type="cim:cimString">{escape(reason)}'
            "</p:error_WindowsErrorMessage></p:MSFT_WmiError>"
        )
    if fault.wsman_code is not None:
        detail += (
            '<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" '
            f"Code=\"{fault.wsman_code}\" Machine={quoteattr(machine)}><f:Message>{escape(reason)}</f:Message>"
            "</f:WSManFault>"
        )
    body = (
        f"<s:Fault><s:Code><s:Value>{fault.code}</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{escape(reason)}</s:Text></s:Reason>'
        f"<s:Detail>{detail}</s:Detail></s:Fault>"
    )
    return _envelope("fault", "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)
