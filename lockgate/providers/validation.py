"""What each endpoint kind's request must hold before anything is translated: its
required fields, and the JSON types of the fields lockgate reads. A failure is the
client's 400 naming the field (OpenAI's wording where OpenAI has one), never a failure
deep inside a translation. Each endpoint kind (providers/endpoints.py) names its check.
"""

from __future__ import annotations

from typing import Any

from lockgate.kernel.errors import bad_request

# Fields lockgate reads, with the JSON types OpenAI's API gives them (null is always
# allowed: it means absent). Anything else in a known field is the client's mistake.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "stream_options": (dict,),
    "messages": (list,),
    "tools": (list,),
    "metadata": (dict,),
    "user": (str,),
    "temperature": (int, float),
    "top_p": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
}
INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n", "seed")
JSON_TYPE_NAMES = {bool: "a boolean", dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}


def check_field_types(body: dict) -> None:
    for name, types in FIELD_TYPES.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            raise bad_request(f"`{name}` must be {JSON_TYPE_NAMES[types[0]]}.", name, "invalid_type")
    for name in ("messages", "tools"):
        for i, item in enumerate(body.get(name) or ()):
            if not isinstance(item, dict):
                raise bad_request(f"`{name}[{i}]` must be an object.", f"{name}[{i}]", "invalid_type")
            content = item.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise bad_request(f"`{name}[{i}].content` must be a string or an array of parts.", f"{name}[{i}].content", "invalid_type")
            if isinstance(content, list) and not all(isinstance(part, (dict, str)) for part in content):
                raise bad_request(f"`{name}[{i}].content` parts must be objects.", f"{name}[{i}].content", "invalid_type")
    for name in INTEGER_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) >= 2**53 or int(value) != value:
            raise bad_request(f"`{name}` must be an integer.", name, "invalid_type")


def require_model(body: dict) -> None:
    model = body.get("model")
    if not model:
        raise bad_request("You must provide a model parameter.", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise bad_request("`model` must be a string.", "model", "invalid_type")


def chat(body: dict) -> None:
    require_model(body)
    check_field_types(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty array.", "messages", "missing_required_parameter")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a `role`.", f"messages[{i}]", "invalid_value")


def completions(body: dict) -> None:
    require_model(body)
    check_field_types(body)
    if "prompt" not in body:
        raise bad_request("You must provide a prompt parameter.", "prompt", "missing_required_parameter")


def embeddings(body: dict) -> None:
    require_model(body)
    check_field_types(body)
    value = body.get("input")
    if value is None or value == "" or value == []:
        raise bad_request("You must provide an input parameter.", "input", "missing_required_parameter")
    if not isinstance(value, (str, list)) or not all(
        isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool)) or (isinstance(item, list) and all(type(i) is int for i in item))
        for item in (value if isinstance(value, list) else ())
    ):
        raise bad_request("`input` must be a string, an array of strings, or token arrays.", "input", "invalid_type")


def responses(body: dict) -> None:
    require_model(body)
    check_field_types(body)
    if "input" not in body and "instructions" not in body:
        raise bad_request("You must provide an input parameter.", "input", "missing_required_parameter")


def messages(body: dict) -> None:
    require_model(body)
    check_field_types(body)
    if not isinstance(body.get("messages"), list):
        raise bad_request("`messages` must be an array.", "messages", "missing_required_parameter")
    if body.get("system") is not None and not isinstance(body["system"], (str, list)):
        raise bad_request("`system` must be a string or an array of text blocks.", "system", "invalid_type")


def rerank(body: dict) -> None:
    require_model(body)
    if not isinstance(body.get("query"), str) or not body["query"]:
        raise bad_request("You must provide a query parameter (a string).", "query", "missing_required_parameter")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise bad_request("`documents` must be a non-empty array.", "documents", "missing_required_parameter")
    if not all(isinstance(d, (str, dict)) for d in documents):
        raise bad_request("Each document must be a string or an object.", "documents", "invalid_type")
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise bad_request("`top_n` must be a positive integer.", "top_n", "invalid_type")


def prompt(body: dict) -> None:
    """Images from a text prompt (generations, edits)."""
    require_model(body)
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        raise bad_request("You must provide a prompt parameter.", "prompt", "missing_required_parameter")
    n = body.get("n")
    if n is not None and not (str(n).isdigit() and 1 <= int(n) <= 10):
        raise bad_request("`n` must be an integer from 1 to 10.", "n", "invalid_value")


def speech(body: dict) -> None:
    require_model(body)
    if not isinstance(body.get("input"), str) or not body["input"]:
        raise bad_request("You must provide an input parameter (the text to speak).", "input", "missing_required_parameter")
    if not isinstance(body.get("voice"), (str, dict)):
        raise bad_request("You must provide a voice parameter.", "voice", "missing_required_parameter")


def moderation(body: dict) -> None:
    require_model(body)
    if body.get("input") in (None, "", []):
        raise bad_request("You must provide an input parameter.", "input", "missing_required_parameter")


def body_form(files: tuple[str, ...], form: Any) -> None:
    """Uploads come as multipart/form-data with their file as one of `files` (the first
    is the name asked for), everything else as JSON; `form` is the parsed multipart
    body (kernel/multipart.py), None for JSON."""
    if files:
        if form is None:
            raise bad_request("This endpoint takes a multipart/form-data body (the file and its fields).", None, "invalid_content_type")
        if not any(part.name in files for part in form.files()):
            raise bad_request(f"You must upload a file as the `{files[0]}` field.", files[0], "missing_required_parameter")
    elif form is not None:
        raise bad_request("Content-Type must be application/json for this endpoint.", None, "invalid_content_type")
