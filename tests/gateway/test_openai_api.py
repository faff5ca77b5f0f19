"""OpenAI request bodies turned into one Generate's parameters, or refused naming the parameter."""
import pytest

from gateway.openai_api import BadRequest, parse_chat, parse_completion


def test_defaults_follow_openai():
    params = parse_completion({"prompt": "x"})
    assert (params.max_new_tokens, params.temperature, params.top_p, params.top_k, params.seed) == (16, 1.0, 1.0, 0, None)
    assert parse_chat({"messages": [{"role": "user", "content": "hi"}]}, lambda m: "T").max_new_tokens == 512


def test_prompt_forms_and_our_extras():
    assert parse_completion({"prompt": ["abc"]}).prompt == "abc"
    assert parse_completion({"prompt": [[5, 6, 7]]}).prompt == [5, 6, 7]
    params = parse_completion({"prompt": [1, 2], "top_k": -1, "stop": "\n", "max_completion_tokens": 9, "seed": 3})
    assert (params.prompt, params.top_k, params.stop, params.max_new_tokens, params.seed) == ([1, 2], 0, ["\n"], 9, 3)
    assert parse_completion({"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}).include_usage


def test_chat_renders_text_parts_and_developer_as_system():
    seen = []
    parse_chat({"messages": [{"role": "developer", "content": "be brief"},
                             {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
               lambda m: seen.append(m) or "T")
    assert seen == [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]]


@pytest.mark.parametrize("body, param", [
    ({"prompt": ""}, "prompt"), ({"prompt": [1, "a"]}, "prompt"), ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "x", "n": 3}, "n"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens"), ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"), ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": ["a"] * 17}, "stop"), ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "logprobs": 2}, "logprobs"), ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "x", "stream": "yes"}, "stream"), ({"prompt": "x", "temperature": True}, "temperature"),
])
def test_bad_completion_bodies_name_the_parameter(body, param):
    with pytest.raises(BadRequest) as info:
        parse_completion(body)
    assert info.value.param == param and info.value.status == 400


@pytest.mark.parametrize("messages", [[], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 5}],
                                      [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]])
def test_bad_chat_messages_are_refused(messages):
    with pytest.raises(BadRequest) as info:
        parse_chat({"messages": messages}, lambda m: "T")
    assert info.value.param == "messages"


def test_a_body_that_is_not_an_object_is_refused():
    with pytest.raises(BadRequest):
        parse_completion(["prompt"])
