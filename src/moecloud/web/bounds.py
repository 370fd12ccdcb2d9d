"""Bounds on what one OpenAI request may ask for, the same at both edges (the gateway checks the ones it meters
by, the worker all of them): they keep a request's work and its worst-case hold finite. Tabled in docs/api.md."""

MAX_CHOICES = 64  # n (and best_of) per prompt
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 1000  # characters
MAX_STOP_TOKEN_IDS = 64
MAX_PROMPTS = 256  # prompts in one /v1/completions request
