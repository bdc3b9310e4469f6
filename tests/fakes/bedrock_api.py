"""The fake upstream's Bedrock Runtime: Converse, ConverseStream (binary event-stream
frames with their CRCs, each frame sent in two pieces so a reader must reassemble
them), InvokeModel for Titan and Cohere embeddings, AWS's error shape
(`x-amzn-ErrorType` and `{"message"}`), every call SigV4-verified; with a
`stream_fault`, a ConverseStream whose framing goes wrong (bad prelude or message CRCs,
a prelude claiming 4 GB, a frame cut off, a payload that is not JSON, exception and
error messages of each kind). Also the two
endpoints of the AWS credential chain the tests use: container credentials and STS
AssumeRoleWithWebIdentity."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import struct
import uuid
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from lockgate.providers.base import looks_like_context_error
from tests.fakes.aws import AwsAccounts, event, exception, frame, verify_sigv4
from tests.fakes.upstream import BREAK, Behaviour, FakeUpstream, count_tokens, faulted, json_response, words

EXCEPTIONS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
CONVERSE_KEYS = {
    "messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields", "guardrailConfig",
    "promptVariables", "additionalModelResponseFieldPaths", "requestMetadata", "performanceConfig",
}
WEB_IDENTITY_TOKEN = "eyJhbGciOiJSUzI1NiJ9.fake-service-account-token.sig"


@dataclass
class InvokeCalls:
    """Titan embedding calls being answered now, and the most there were at once."""

    in_flight: int = 0
    peak: int = 0


def aws_error(status: int, kind: str, message: str) -> Response:
    response = json_response({"message": message}, status)
    response.headers["x-amzn-errortype"] = f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    response.headers["x-amzn-requestid"] = str(uuid.uuid4())
    return response


def behaviour_error(b: Behaviour) -> Response:
    message = b.error_message
    if b.status == 400 and looks_like_context_error(message):
        message = "Input is too long for requested model."
    return aws_error(b.status, EXCEPTIONS.get(b.status, "InternalServerException"), message)


def text_of(blocks: list) -> str:
    return "".join(b.get("text", "") for b in blocks if isinstance(b, dict))


def validate(body: dict) -> str | None:
    """What Bedrock's Converse checks before it answers (a subset that matters here)."""
    extra = set(body) - CONVERSE_KEYS
    if extra:
        return f"extraneous key [{sorted(extra)[0]}] is not permitted"
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "user":
        return "A conversation must start with a user message. Try again with a conversation that starts with a user message."
    for previous, current in zip(messages, messages[1:], strict=False):
        if previous.get("role") == current.get("role"):
            return "A conversation must alternate between user and assistant roles."
    for message in messages:
        for block in message.get("content") or []:
            if len(block) != 1:
                return "The content block must have exactly one member."
            if ("toolUse" in block or "toolResult" in block) and not body.get("toolConfig"):
                return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    return None


def reply_for(body: dict, b: Behaviour) -> tuple[str | None, dict | None]:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    results = [blk["toolResult"] for blk in last.get("content") or [] if "toolResult" in blk]
    if results:
        content = results[0].get("content") or []
        said = "".join(c.get("text") or orjson.dumps(c.get("json")).decode() for c in content)
        return "tool said: " + said, None
    tools = (body.get("toolConfig") or {}).get("tools") or []
    if tools:
        return None, {"toolUseId": "tooluse_" + secrets.token_urlsafe(16), "name": tools[0]["toolSpec"]["name"], "input": b.tool_args}
    if b.reply is not None:
        return b.reply, None
    users = [m for m in messages if m.get("role") == "user"]
    return "echo: " + (text_of(users[-1].get("content") or []) if users else ""), None


STREAM_EXCEPTIONS = (
    "modelStreamErrorException", "throttlingException", "validationException", "internalServerException",
    "serviceUnavailableException", "modelTimeoutException",
)


def stream_faults(message: str) -> dict[str, bytes]:
    """What can go wrong inside ConverseStream's event-stream framing."""
    good = event("contentBlockDelta", padded({"contentBlockIndex": 0, "delta": {"text": " never read"}}))
    faults = {
        "error": exception("modelStreamErrorException", orjson.dumps({"message": message})),
        # `:message-type: error`, the framing's other failure: code and message in headers
        "error_message": frame({":message-type": "error", ":error-code": "InternalFailure", ":error-message": message}, b""),
        "garbage": event("contentBlockDelta", b"<html><body>502 Bad Gateway</body></html>"),
        "bad_prelude_crc": good[:8] + bytes(b ^ 0xFF for b in good[8:12]) + good[12:],
        "bad_message_crc": good[:-4] + bytes(b ^ 0xFF for b in good[-4:]),
        # a prelude (its CRC right) claiming a 4 GB message
        "huge_frame": huge_prelude() + b"\x00" * 64,
    }
    faults.update({f"exception:{kind}": exception(kind, orjson.dumps({"message": message})) for kind in STREAM_EXCEPTIONS})
    return faults


def huge_prelude() -> bytes:
    prelude = struct.pack(">II", 0xFFFFFFFF, 0)
    return prelude + struct.pack(">I", zlib.crc32(prelude))


def halves(pieces: list[bytes]) -> list[bytes]:
    """Each frame sent in two reads, so a reader must put frames back together."""
    return [half for f in pieces for half in ((f,) if f == BREAK else (f[: len(f) // 2], f[len(f) // 2 :]))]


def padded(payload: dict) -> bytes:
    # Bedrock pads every event payload with a `p` field of varying length
    return orjson.dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyz"[: secrets.randbelow(20) + 1]})


def routes(fake: FakeUpstream) -> list[Route]:
    accounts = fake.aws = AwsAccounts()
    titan = fake.titan = InvokeCalls()

    async def signed_body(request: Request) -> tuple[dict | None, Response | None]:
        raw = await request.body()
        await fake.record(request)
        problem = verify_sigv4(request, raw, accounts, "bedrock")
        if problem:
            kind, _, message = problem.partition(": ")
            return None, aws_error(403, kind, message)
        body = orjson.loads(raw) if raw else {}
        return body, None

    async def converse(request: Request) -> Response:
        body, refused = await signed_body(request)
        if refused is not None:
            return refused
        model, action = request.path_params["model"], request.path_params["action"]
        if action not in ("converse", "converse-stream"):
            return aws_error(404, "UnknownOperationException", f"unknown operation {action}")
        b = fake.behaviour(model)
        await fake.before_answer(b)
        if b.status != 200:
            return behaviour_error(b)
        problem = validate(body)
        if problem:
            return aws_error(400, "ValidationException", problem)
        reply, call = reply_for(body, b)
        usage = {
            "inputTokens": count_tokens(body.get("messages")) + count_tokens(body.get("system")),
            "outputTokens": len(words(reply)) if reply is not None else count_tokens(call),
        }
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        stop = "tool_use" if call else "end_turn"
        if action == "converse":
            content = [{"toolUse": call}] if call else [{"text": reply}]
            return json_response(
                {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 12}}
            )
        frames = [event("messageStart", padded({"role": "assistant"}))]
        if call:
            start = {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": call["toolUseId"], "name": call["name"]}}}
            frames.append(event("contentBlockStart", padded(start)))
            arguments = orjson.dumps(call["input"]).decode()
            for i in range(0, len(arguments), 8):
                frames.append(event("contentBlockDelta", padded({"contentBlockIndex": 0, "delta": {"toolUse": {"input": arguments[i : i + 8]}}})))
        else:
            for piece in words(reply):
                frames.append(event("contentBlockDelta", padded({"contentBlockIndex": 0, "delta": {"text": piece}})))
        frames.append(event("contentBlockStop", padded({"contentBlockIndex": 0})))
        frames.append(event("messageStop", padded({"stopReason": stop})))
        if b.error_message.startswith("in-stream "):
            frames.append(exception("throttlingException", orjson.dumps({"message": b.error_message})))
        frames.append(event("metadata", padded({"usage": usage, "metrics": {"latencyMs": 15}})))
        frames = faulted(frames, 1, b, stream_faults(b.error_message))
        return StreamingResponse(fake.paced(halves(frames), b), media_type="application/vnd.amazon.eventstream")

    async def invoke(request: Request) -> Response:
        body, refused = await signed_body(request)
        if refused is not None:
            return refused
        model = request.path_params["model"]
        b = fake.behaviour(model)
        await fake.before_answer(b)
        if b.status != 200:
            return behaviour_error(b)
        from tests.fakes.openai_api import vector_for

        if "cohere.embed" in model:
            if not isinstance(body.get("texts"), list) or not body.get("input_type"):
                return aws_error(400, "ValidationException", "Malformed input request: texts and input_type are required")
            return json_response(
                {"embeddings": [vector_for(t) for t in body["texts"]], "id": str(uuid.uuid4()), "response_type": "embeddings_floats", "texts": body["texts"]}
            )
        if not isinstance(body.get("inputText"), str) or set(body) - {"inputText", "dimensions", "normalize", "embeddingTypes"}:
            return aws_error(400, "ValidationException", "Malformed input request: #: extraneous key is not permitted")
        text = body["inputText"]
        titan.in_flight += 1
        titan.peak = max(titan.peak, titan.in_flight)
        try:
            await asyncio.sleep(b.input_latency_s.get(text, 0))
        finally:
            titan.in_flight -= 1
        if text in b.input_status:
            status = b.input_status[text]
            return aws_error(status, EXCEPTIONS.get(status, "InternalServerException"), f"refused input {text!r}")
        return json_response({"embedding": vector_for(text, body.get("dimensions") or 8), "inputTextTokenCount": count_tokens(text)})

    async def container_credentials(request: Request) -> Response:
        """What ECS / EKS Pod Identity answer at AWS_CONTAINER_CREDENTIALS_FULL_URI."""
        await fake.record(request)
        if request.headers.get("authorization") != "container-auth-token":
            return json_response({"message": "unauthorized"}, 401)
        access, secret, token = accounts.issue()
        expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json_response({"AccessKeyId": access, "SecretAccessKey": secret, "Token": token, "Expiration": expiration})

    async def sts(request: Request) -> Response:
        """STS AssumeRoleWithWebIdentity, the call IRSA makes with the pod's token."""
        form = dict(parse_qsl((await request.body()).decode()))
        await fake.record(request)
        if form.get("Action") != "AssumeRoleWithWebIdentity" or form.get("WebIdentityToken") != WEB_IDENTITY_TOKEN:
            return Response("<ErrorResponse><Error><Code>InvalidIdentityToken</Code></Error></ErrorResponse>", 400, media_type="text/xml")
        access, secret, token = accounts.issue()
        expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        xml = (
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>'
            f"<Credentials><AccessKeyId>{access}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
            f"<SessionToken>{token}</SessionToken><Expiration>{expiration}</Expiration></Credentials>"
            f"<SubjectFromWebIdentityToken>system:serviceaccount:onyx:lockgate</SubjectFromWebIdentityToken>"
            f"<AssumedRoleUser><Arn>{form.get('RoleArn')}/lockgate</Arn><AssumedRoleId>AROA:lockgate</AssumedRoleId></AssumedRoleUser>"
            f"</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>"
        )
        return Response(xml, 200, media_type="text/xml")

    return [
        Route("/model/{model}/invoke", invoke, methods=["POST"]),
        Route("/model/{model}/{action:str}", converse, methods=["POST"]),
        Route("/aws/container-credentials", container_credentials, methods=["GET"]),
        Route("/", sts, methods=["POST"]),
    ]
