"""The official `openai` Python client through llmgw (run by llmgw-quickstart,
which sets GATEWAY_URL): a plain completion and a stream, checking content and
token usage as the mock provider sends them."""

import os
import sys
import urllib.request

from openai import OpenAI


def client_for(host: str) -> OpenAI:
    # The route matches on the host; the gateway supplies model, path and key.
    return OpenAI(
        base_url=os.environ["GATEWAY_URL"] + "/v1",
        api_key="sk-client-placeholder",
        default_headers={"Host": host},
        max_retries=0,
        timeout=30,
    )


def main() -> int:
    client = client_for("test.com")
    messages = [{"role": "user", "content": "Please introduce yourself"}]

    plain = client.chat.completions.create(model="any", messages=messages)
    assert plain.choices[0].message.content == "Hello! I am Qwen, ...", plain
    assert plain.model == "qwen1.5-72b-chat", plain.model
    assert plain.usage is not None
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens, plain.usage.total_tokens) == (12, 130, 142), plain.usage

    # A stream, through the provider of tests/python/streaming.yaml (host
    # stream.test), which leaves `stream` to the client.
    sc = client_for("stream.test")
    chunks = list(sc.chat.completions.create(model="any", messages=messages, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "c0c1c2", content
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage, "no usage chunk: the gateway asks for stream_options.include_usage"
    assert (usage[-1].prompt_tokens, usage[-1].completion_tokens, usage[-1].total_tokens) == (5, 3, 8), usage

    # The quickstart's provider forces `stream: false`; a client asking for a
    # stream still gets one (the gateway turns the completion into chunks),
    # with the usage chunk it asked for.
    chunks = list(client.chat.completions.create(
        model="any", messages=messages, stream=True, stream_options={"include_usage": True}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Hello! I am Qwen, ...", chunks
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].total_tokens == 142, usage

    # A provider that forces `stream: true` (host forced.test): a client
    # asking for a plain completion gets one, gathered from the stream.
    fc = client_for("forced.test")
    gathered = fc.chat.completions.create(model="any", messages=messages)
    assert gathered.choices[0].message.content == "c0c1c2", gathered
    assert gathered.usage is not None and gathered.usage.total_tokens == 8, gathered.usage

    admin = os.environ.get("GATEWAY_ADMIN_URL")
    if admin:
        metrics = urllib.request.urlopen(admin + "/metrics", timeout=10).read().decode()
        assert 'gen_ai_token_type="input"' in metrics, metrics
    print("openai client: plain and stream through llmgw OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
