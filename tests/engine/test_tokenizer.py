from __future__ import annotations

import pytest

from moecloud.engine.tokenizer import ChatTemplateError, IncrementalDetokenizer, Tokenizer


def test_incremental_detokenizer_never_emits_broken_utf8(tiny_checkpoint):
    tok = Tokenizer(tiny_checkpoint)
    text = "héllo wörld 世界 🙂 naïve café — ok"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, tok.encode("prompt"))
    pieces = [detok.add(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert any(p == "" for p in pieces)  # multi-byte characters span several byte-level tokens


def test_encode_adds_bos_once(tiny_checkpoint):
    tok = Tokenizer(tiny_checkpoint)
    assert tok.encode("hi")[0] == tok.bos_token_id
    assert tok.bos_token_id not in tok.encode("hi", add_special_tokens=False)
    assert tok.decode(tok.encode("hi there")) == "hi there"


def test_template_errors_are_clear(tiny_checkpoint, tmp_path):
    tok = Tokenizer(tiny_checkpoint)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_token_bytes_are_raw_even_for_partial_characters(tiny_checkpoint):
    tok = Tokenizer(tiny_checkpoint)
    text = "snow ☃ and 🙂"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [tok.token_bytes(i) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    assert any(not _decodes(p) for p in pieces)  # some token is only part of a character
    assert tok.token_bytes(tok.bos_token_id) == tok.bos_token.encode()


def _decodes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_a_chat_template_is_compiled_once_and_a_new_one_takes_effect_at_once(tiny_checkpoint, monkeypatch):
    """Compiling the Jinja template was most of each chat request's cost in the worker's HTTP process."""
    tok = Tokenizer(tiny_checkpoint)
    compiled: list[str] = []
    compile_template = tok._env.from_string
    monkeypatch.setattr(tok._env, "from_string", lambda text: compiled.append(text) or compile_template(text))
    messages = [{"role": "user", "content": "hi"}]
    first = tok.apply_chat_template(messages)
    assert tok.apply_chat_template(messages) == first and "hi" in first
    assert len(compiled) == 1
    tok.chat_template = "{{ messages[0]['content'] }}!"
    assert tok.apply_chat_template(messages) == "hi!" and len(compiled) == 2
    tok.chat_template = "{% if %}"
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        tok.apply_chat_template(messages)
