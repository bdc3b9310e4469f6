"""Provider-native passthrough routes: `/openai/{path}`, `/anthropic/{path}`,
`/gemini/{path}`, `/azure/{path}` and `/bedrock/{path}` relay any method, body and answer
(JSON, multipart uploads, binary downloads, SSE streams as they come) to one deployment's
provider, for the APIs lockgate does not model: files, batches, fine-tuning, vector stores.

What is decided here, before anything goes upstream:
- the caller may use this provider's routes: its key lists the provider in `passthrough:`
  (auth.yaml or a runtime key), or it is the master key; anyone else, and any caller of a
  gateway without auth, gets 403 `passthrough_not_allowed`;
- which deployment: `?deployment=ID`, else the `x-lockgate-deployment` header, else
  gateway.yaml's `passthrough: {openai: ID}`; it must be a deployment of that provider
  (404 `deployment_not_found`), of a model the key may use (403 `model_not_allowed`);
- the path stays under the provider's API root (400 `invalid_path`, providers/passthrough.py);
- every model the request names is one the key may use (403 `model_not_allowed`): in its
  path (Gemini's, Bedrock's), its JSON body (`model`, an Anthropic batch's requests), the
  JSONL lines of an upload (an OpenAI batch's input file).

The client's credentials never go upstream and the deployment's never come back: the
request's headers are rebuilt (providers/passthrough.py), and an upstream error is
scrubbed of every secret the gateway holds. Nothing is cached, rewritten or retried.

The answer goes back as it comes, piece by piece, read on the side for its usage
(providers/passthrough.py `AnswerReader`), which is in the request context before its
last byte goes out, so the budget middleware charges it then: priced by the deployment's
`price:`, else by the model the answer names. A batch's results file (`GET
/openai/v1/files/{id}/content` of a batch's output, Anthropic's
`/v1/messages/batches/{id}/results`) is charged once, the first time it is read whole
through lockgate, at the batch rate. An answer that reports no usage is counted in
`lockgate_unmetered_answers_total`; when the request named a model (a model call through
the provider's own API), it is charged an estimate, as an answer of an app that is not
lockgate's is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from lockgate.kernel import metrics
from lockgate.kernel.context import RequestContext, get_context, header, read_body
from lockgate.kernel.errors import GatewayError, bad_request
from lockgate.kernel.logs import get_logger
from lockgate.kernel.store import Store, guard
from lockgate.kernel.store.guard import StoreUnavailable
from lockgate.kernel.websocket import query_value
from lockgate.providers import passthrough
from lockgate.providers.base import CredentialsError, Deployment, UpstreamRequest
from lockgate.providers.registry import PROVIDERS
from lockgate.providers.tokens import prompt_tokens
from lockgate.proxy.answers import TrackedSend, not_allowed, response_headers, upstream_failure
from lockgate.proxy.handlers import Endpoint, answer_or_refuse, error_answer, run_until_disconnect
from lockgate.proxy.models import ModelConfig
from lockgate.proxy.secrets import Secrets
from lockgate.proxy.upstream import UpstreamClient, UpstreamError, UpstreamResponse

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CHARGED_KEY = "passthrough-batch:"  # + provider:deployment:path: a batch's results, charged once
CHARGED_TTL_S = 400 * 86400.0
STORE_TIMEOUT_S = 0.5
log = get_logger("lockgate.passthrough")


class Passthrough:
    """The passthrough routes of one gateway. `models` is read on every request and
    `defaults` is swapped whole by a reload of gateway.yaml."""

    def __init__(
        self, models: Callable[[], Mapping[str, ModelConfig]], defaults: Mapping[str, str], client: UpstreamClient, store: Store, secrets: Secrets,
    ) -> None:
        self.models = models
        self.defaults = defaults
        self.client = client
        self.store = store
        self.secrets = secrets

    def routes(self) -> list[Route]:
        return [Route(f"/{name}/{{path:path}}", Endpoint(partial(self.serve, name)), methods=METHODS) for name in passthrough.PROVIDERS]

    async def serve(self, provider: str, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        ctx.attempt.proxied = True  # the usage in the context is lockgate's count, whatever it is
        tracked = TrackedSend(send)
        await answer_or_refuse(scope, ctx, send, tracked, self._serve(provider, scope, receive, tracked, ctx))

    async def _serve(self, provider: str, scope: Scope, receive: Receive, tracked: TrackedSend, ctx: RequestContext) -> None:
        try:
            await self._relay(provider, scope, receive, tracked, ctx)
        except passthrough.PathRefused as exc:
            raise bad_request(f"This path cannot be relayed: {exc}.", "path", "invalid_path") from None

    async def _relay(self, provider: str, scope: Scope, receive: Receive, tracked: TrackedSend, ctx: RequestContext) -> None:
        dep, path = self._admit(provider, scope, ctx)
        body = await read_body(scope, receive, ctx.max_body)
        content_type = header(scope, b"content-type")
        if ctx.model_check is not None:
            for named in passthrough.models_named(provider, path, body, content_type):
                if not ctx.allows(named):
                    raise not_allowed(named)
        model = passthrough.body_model(body, content_type)
        if model is not None:
            ctx.model_requested = ctx.attempt.model_served = model
        request = UpstreamRequest(
            passthrough.upstream_url(provider, dep, path, scope.get("query_string", b"")),
            passthrough.upstream_headers(provider, dep, scope.get("headers", ())),
            body,
            scope["method"],
        )
        relay = Relay(self, ctx, provider, dep, path, body if model is not None else None)
        await run_until_disconnect(relay.run(request, tracked), receive, lambda: tracked.finished)

    def _admit(self, provider: str, scope: Scope, ctx: RequestContext) -> tuple[Deployment, str]:
        """The deployment and path to relay to, or the refusal."""
        identity = ctx.identity
        if identity is None:
            message = f"The {provider} passthrough routes need an API key allowed them (`passthrough: [{provider}]` on the key in auth.yaml or a runtime key)."
            raise GatewayError(403, message, "invalid_request_error", "passthrough_not_allowed")
        if not identity.admin and provider not in identity.passthrough:
            message = f"This API key may not use the {provider} passthrough routes: its `passthrough:` does not list {provider}."
            raise GatewayError(403, message, "invalid_request_error", "passthrough_not_allowed")
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        root = scope.get("root_path", "").encode("utf-8")
        if root and raw_path.startswith(root):
            raw_path = raw_path[len(root):]
        path = passthrough.relative_path(raw_path, provider)
        wanted = query_value(scope, passthrough.DEPLOYMENT_PARAM) or header(scope, passthrough.DEPLOYMENT_HEADER.encode()) or self.defaults.get(provider)
        if not wanted:
            message = (f"Name the {provider} deployment to relay to with `?deployment=ID` or the `x-lockgate-deployment` header, "
                       f"or set `passthrough: {{{provider}: ID}}` in gateway.yaml.")
            raise bad_request(message, "deployment", "missing_required_parameter")
        found = passthrough.deployments_of(provider, self.models()).get(wanted)
        if found is None:
            raise GatewayError(404, f"No {provider} deployment has the id `{wanted}`.", "invalid_request_error", "deployment_not_found", "deployment")
        name, dep = found
        if not ctx.allows(name):
            raise not_allowed(name)
        ctx.attempt.deployment = dep.id
        ctx.attempt.upstream_model = dep.model
        return dep, path


class Relay:
    """One relayed request: sent, and its answer passed on as it comes, read for usage."""

    def __init__(self, routes: Passthrough, ctx: RequestContext, provider: str, dep: Deployment, path: str, model_call: bytes | None) -> None:
        self.routes = routes
        self.ctx = ctx
        self.provider = provider
        self.dep = dep
        self.path = path
        self.model_call = model_call  # the request's JSON body, when it named a model

    async def run(self, request: UpstreamRequest, send: Send) -> None:
        ctx, dep = self.ctx, self.dep
        adapter = PROVIDERS[dep.provider].adapter
        started = time.perf_counter()
        try:
            await adapter.prepare(dep, request)  # an empty key refused, Bedrock's SigV4 signature
            upstream = await self.routes.client.send(request, dep.timeout_s)
        except CredentialsError as exc:
            ctx.attempt.failure = "auth"
            raise GatewayError(502, f"Deployment {dep.id}: {exc}", "api_error", "upstream_auth_failed") from None
        except UpstreamError as exc:
            ctx.attempt.failure = exc.kind
            raise upstream_failure(exc) from None
        finally:
            ctx.upstream_s += time.perf_counter() - started
        try:
            await self._answer(upstream, send)
        finally:
            upstream.close()

    async def _answer(self, upstream: UpstreamResponse, send: Send) -> None:
        ctx, secrets = self.ctx, self.routes.secrets
        status = upstream.status
        headers = [(name, secrets.scrub(value)) for name, value in passthrough.answer_headers(upstream.header_items())]
        if status >= 400:
            ctx.attempt.upstream_status = status
            raw = secrets.scrub(await error_answer(upstream))
            if status == 401:
                # the gateway's own provider credentials were refused: not the client's fault
                message = f"The upstream refused the gateway's credentials for deployment {self.dep.id}."
                raise GatewayError(502, message, "api_error", "upstream_auth_failed")
            headers = [h for h in headers if h[0] != b"content-length"] + [(b"content-length", str(len(raw)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers + response_headers(ctx)})
            await send({"type": "http.response.body", "body": raw})
            return
        reader = passthrough.AnswerReader(upstream.content_type)
        await send({"type": "http.response.start", "status": status, "headers": headers + response_headers(ctx)})
        try:
            async for piece in upstream.iter_bytes():
                reader.feed(piece)
                if reader.sse and b'"error"' in piece:
                    piece = secrets.scrub(piece)
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except UpstreamError as exc:
            # a download or stream cut short cannot say so in the provider's own format:
            # the answer is left unfinished, so the client never takes it for whole
            ctx.attempt.stream_error = exc.kind
            log.warning("passthrough_answer_broken", request_id=ctx.request_id, deployment=self.dep.id, error=exc.kind)
            ctx.attempt.usage = None if reader.batch else reader.usage
            return
        reader.finish()
        ctx.attempt.usage = await self._usage(reader)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _usage(self, reader: passthrough.AnswerReader) -> dict[str, Any] | None:
        """What the answer is charged for (in the context before its last byte goes out)."""
        ctx = self.ctx
        if reader.model is not None:
            ctx.attempt.upstream_model = reader.model
            ctx.attempt.model_served = ctx.attempt.model_served or reader.model
        if reader.batch:
            usage = reader.batch_usage()
            if usage is not None and not await self._first_read():
                log.info("passthrough_batch_already_charged", request_id=ctx.request_id, deployment=self.dep.id)
                return None
            log.info("passthrough_batch_charged", request_id=ctx.request_id, deployment=self.dep.id, model=reader.model)
            return usage
        if reader.usage is not None:
            return reader.usage
        metrics.unmetered.inc()
        if self.model_call is None:
            log.info("passthrough_unmetered", request_id=ctx.request_id, deployment=self.dep.id)
            return None
        body = passthrough.loads(self.model_call)
        prompt = prompt_tokens(body) if isinstance(body, dict) else 0
        completion = (reader.chars + 3) // 4
        estimate = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, "estimated": True}
        log.warning("passthrough_answer_without_usage", request_id=ctx.request_id, deployment=self.dep.id, estimated=estimate)
        return estimate

    async def _first_read(self) -> bool:
        """Whether this is the first time this batch's results were read whole (charged
        then, never again); a store that does not answer charges them again rather than
        let them go free."""
        key = f"{CHARGED_KEY}{self.provider}:{self.dep.id}:{self.path}"
        store = self.routes.store
        try:
            return bool(await guard.call(store, store.add(key, b"1", CHARGED_TTL_S), STORE_TIMEOUT_S))
        except StoreUnavailable:
            log.warning("passthrough_batch_dedup_unavailable", request_id=self.ctx.request_id)
            return True

