from batchrun.policy.cachekey import cache_key, key_digest

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def key(**over: object) -> bytes:
    parts: dict[str, object] = {"host": "api.openai.com", "key": key_digest("sk-a"),
                                "url": "/v1/chat/completions", "body": BODY}
    parts.update(over)
    return cache_key(parts["host"], parts["key"], parts["url"], parts["body"])  # type: ignore[arg-type]


def test_field_order_does_not_make_another_request() -> None:
    reordered = {"max_tokens": 5, "messages": [{"content": "hi", "role": "user"}],
                 "model": "gpt-4o-mini"}
    assert key(body=reordered) == key()


def test_anything_else_that_differs_is_another_request() -> None:
    assert key(body={**BODY, "temperature": 0}) != key()
    assert key(body={**BODY, "messages": [{"role": "user", "content": "hi "}]}) != key()
    assert key(host="other.example") != key()
    assert key(key=key_digest("sk-b")) != key()
    assert key(url="/v1/embeddings") != key()


def test_the_digest_of_a_key_is_not_the_key_nor_the_ledger_fingerprint() -> None:
    from batchrun.files.ledger import key_fingerprint

    digest = key_digest("sk-secret")
    assert b"sk-secret" not in digest
    assert key_fingerprint("sk-secret")[4:] not in digest.hex()
