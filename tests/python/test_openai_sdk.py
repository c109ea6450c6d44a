"""The official `openai` Python package pointed at Sluice.

Run by scripts/sdk_test.sh against a running stack (simulator upstream); it passes the base
URL and the tenant key in SLUICE_SDK_BASE_URL and SLUICE_SDK_KEY.
"""

import os
import unittest

import openai

BASE = os.environ["SLUICE_SDK_BASE_URL"]
KEY = os.environ["SLUICE_SDK_KEY"]


def client(key=KEY):
    return openai.OpenAI(base_url=BASE, api_key=key, max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "What does a sluice gate do?"}]


class OpenAISdk(unittest.TestCase):
    def test_models_are_listed(self):
        ids = [m.id for m in client().models.list()]
        self.assertIn("sim-small", ids)
        self.assertIn("sim-embed", ids)

    def test_plain_and_streamed_completions_agree(self):
        plain = client().chat.completions.create(model="sim-small", messages=MESSAGES, max_tokens=24)
        self.assertEqual(plain.object, "chat.completion")
        text = plain.choices[0].message.content
        self.assertTrue(text)
        self.assertGreater(plain.usage.completion_tokens, 0)

        stream = client().chat.completions.create(
            model="sim-small",
            messages=MESSAGES,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(streamed, text)
        self.assertIsNotNone(chunks[-1].usage, "usage on the final chunk")
        self.assertEqual(chunks[-1].usage.total_tokens, plain.usage.total_tokens)

    def test_priority_header_is_accepted(self):
        r = client().chat.completions.create(
            model="sim-small", messages=MESSAGES, max_tokens=8, extra_headers={"X-Priority": "high"}
        )
        self.assertTrue(r.choices[0].message.content)

    def test_embeddings(self):
        r = client().embeddings.create(model="sim-embed", input=["a sluice", "a lock"])
        self.assertEqual(len(r.data), 2)
        self.assertGreater(len(r.data[0].embedding), 0)

    def test_a_bad_key_is_an_authentication_error(self):
        with self.assertRaises(openai.AuthenticationError) as cm:
            client("sk-wrong").chat.completions.create(model="sim-small", messages=MESSAGES)
        self.assertEqual(cm.exception.status_code, 401)

    def test_an_unknown_model_is_not_found(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            client().chat.completions.create(model="no-such-model", messages=MESSAGES)
        self.assertEqual(cm.exception.status_code, 404)
        self.assertEqual(cm.exception.code, "model_not_found")

    def test_a_rate_limited_upstream_is_a_rate_limit_error(self):
        msgs = [{"role": "user", "content": "busy [[sim:status=429]]"}]
        with self.assertRaises(openai.RateLimitError) as cm:
            client().chat.completions.create(model="sim-small", messages=msgs)
        self.assertEqual(cm.exception.status_code, 429)

    def test_a_bad_request_is_a_bad_request_error(self):
        with self.assertRaises(openai.BadRequestError) as cm:
            client().chat.completions.create(model="sim-small", messages=MESSAGES, temperature=5)
        self.assertEqual(cm.exception.status_code, 400)


if __name__ == "__main__":
    unittest.main(verbosity=2)
