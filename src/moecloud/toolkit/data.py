"""Suite examples <-> token batches for a transformers model, and greedy answers for scoring.

Examples are encoded through the engine's own tokenizer and chat template, so a model learns exactly
the token sequence the serving API will show it: ``<bos><User>prompt<Assistant>answer<eos>``, with
the loss on the answer and the end-of-sentence token only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from moecloud.engine.tokenizer import Tokenizer
from moecloud.toolkit.checkpoint_files import write_tokenizer
from moecloud.toolkit.tasks import Example, score

IGNORE = -100


def chat_prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def encode_example(tokenizer: Tokenizer, example: Example) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are IGNORE over the prompt, so only the answer is learned."""
    prompt = chat_prompt_ids(tokenizer, example.prompt)
    answer = tokenizer.encode(example.answer, add_special_tokens=False) + tokenizer.eos_token_ids[:1]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_tokenizer(examples: Sequence[Example], out_dir: str | Path, vocab_size: int = 384) -> Tokenizer:
    """A byte-level BPE with DeepSeek's special tokens, trained on the suite's instruction words.

    Digits and the letter strings of the tasks are left out of the training text, so numbers and
    words to reverse stay one token per character: the model sees every digit it must compute with.
    """
    words = {w for e in examples for w in (e.prompt + " " + e.answer).split() if w.isalpha() and w.islower()}
    write_tokenizer(Path(out_dir), vocab_size, sorted(words) * 4)
    return Tokenizer(out_dir)


@torch.no_grad()
def generate_ids(model: torch.nn.Module, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int = 16,
                 batch_size: int = 64, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> list[list[int]]:
    """Each prompt's answer tokens through the chat template, end token excluded (no cache: answers are short).

    ``temperature`` 0 is greedy; above 0 samples (the on-policy data of distillation).
    """
    model.eval()
    eos = set(tokenizer.eos_token_ids)
    encoded = [chat_prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    answers: dict[int, list[int]] = {}
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        seqs = [list(encoded[i]) for i in batch]
        done = [False] * len(batch)
        outputs: list[list[int]] = [[] for _ in batch]
        for _ in range(max_new_tokens):
            width = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(seqs):  # left padding: every row's next token is at the end
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            if temperature > 0:
                tokens = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
            else:
                tokens = logits.argmax(-1)
            for row, token in enumerate(tokens.tolist()):
                if done[row]:
                    continue
                if token in eos:
                    done[row] = True
                    continue
                outputs[row].append(token)
                seqs[row].append(token)
            if all(done):
                break
        answers.update({i: outputs[row] for row, i in enumerate(batch)})
    return [answers[i] for i in range(len(prompts))]


def greedy_answers(model: torch.nn.Module, tokenizer: Tokenizer, prompts: Sequence[str],
                   max_new_tokens: int = 16) -> list[str]:
    return [tokenizer.decode(ids) for ids in generate_ids(model, tokenizer, prompts, max_new_tokens)]


def accuracy(model: torch.nn.Module, tokenizer: Tokenizer, examples: Sequence[Example]) -> float:
    if not examples:
        return 0.0
    outputs = greedy_answers(model, tokenizer, [e.prompt for e in examples])
    return sum(score(e, o) for e, o in zip(examples, outputs, strict=True)) / len(examples)
