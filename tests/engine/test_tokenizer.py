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
