"""The checkpoint's own tokenizer (``tokenizer.json``), chat template (Jinja2) and incremental detokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Template
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte <-> printable character table used by byte-level BPE vocabularies (inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class ChatTemplateError(ValueError):
    """The messages could not be rendered by the checkpoint's chat template."""


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


class Tokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        self._tok = HFTokenizer.from_file(str(path))
        cfg_path = model_dir / "tokenizer_config.json"
        cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        eos_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.eos_token_ids: list[int] = [eos_id] if eos_id is not None else []
        self.add_bos_token = bool(cfg.get("add_bos_token", self.bos_token_id is not None))
        self.chat_template = self._find_template(model_dir, cfg)
        self.special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        decoder = json.loads(path.read_text(encoding="utf-8")).get("decoder") or {}
        self._byte_alphabet = _byte_level_alphabet() if decoder.get("type") == "ByteLevel" else None
        self._env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._env.globals["raise_exception"] = _raise
        self._compiled: dict[str, Template] = {}  # template text -> compiled: compiling is most of a render's cost

    @staticmethod
    def _find_template(model_dir: Path, cfg: dict[str, Any]) -> str | None:
        jinja = model_dir / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in template}
            return named.get("default", next(iter(named.values()), None))
        return template

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        return self.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (a byte-level token may hold half a character)."""
        token = self._tok.id_to_token(token_id)
        if token is None:
            return b""
        alphabet = self._byte_alphabet
        if alphabet and token_id not in self.special_ids and all(c in alphabet for c in token):
            return bytes(alphabet[c] for c in token)
        return self.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render ``messages`` to prompt text (bos included when the template adds it); ``tools`` in OpenAI's
        shape reach templates that render them (engine.chat_prompt decides when to pass them)."""
        if not self.chat_template:
            raise ChatTemplateError("this model has no chat template; use the completions API")
        try:
            template = self._compiled.get(self.chat_template)
            if template is None:
                template = self._compiled[self.chat_template] = self._env.from_string(self.chat_template)
            return template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                tools=tools,
                **kwargs,
            )
        except TemplateError as err:
            raise ChatTemplateError(f"chat template failed: {err}") from err


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never splitting a UTF-8 character.

    Text is decoded over a short window (``prefix_offset:``) so byte-level tokens that only form a
    character together are emitted once the character is complete.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids[-6:])
        self._prefix_offset = max(len(self._ids) - 5, 0)
        self._read_offset = len(self._ids)

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], self._skip)
        full = decode(self._ids[self._prefix_offset :], self._skip)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return full[len(prefix) :]
