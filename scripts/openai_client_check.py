"""Drives a running `llava serve` with the official `openai` Python client.

Usage: python openai_client_check.py BASE_URL IMAGE_PATH  (BASE_URL like http://127.0.0.1:8000/v1)
Checks a plain answer, a streamed one (same text as the plain one, usage with include_usage),
an image sent as a data: URL, and /v1/models. Prints "ok" and exits 0 when all hold.
"""

import base64
import sys

import openai


def main() -> int:
    base_url, image_path = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=60, max_retries=0)

    models = client.models.list()
    ids = [m.id for m in models.data]
    assert len(ids) == 1, ids
    model = ids[0]

    messages = [{"role": "user", "content": "What is two plus two?"}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=12)
    text = plain.choices[0].message.content
    assert plain.choices[0].message.role == "assistant"
    assert text, plain
    assert plain.usage.completion_tokens == 12, plain.usage
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + 12, plain.usage

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert "".join(pieces) == text, ("".join(pieces), text)
    assert usage is not None and usage.completion_tokens == 12, usage
    assert finish == "length", finish

    with open(image_path, "rb") as f:
        data_url = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    answer = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in the image?"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ],
        max_tokens=8,
    )
    assert answer.choices[0].message.content, answer
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens, answer.usage

    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
        )
        raise AssertionError("a remote image URL was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400

    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
