"""The moecloud inference engine for DeepSeek-architecture MoE models (no HTTP, no store)."""

from moecloud.engine.engine import EngineConfig, LLMEngine, PromptTooLong
from moecloud.engine.llm import LLM
from moecloud.engine.loader import CheckpointError
from moecloud.engine.model_config import ModelConfig, UnsupportedConfig
from moecloud.engine.outputs import CompletionOutput, EngineStats, Logprob, RequestOutput
from moecloud.engine.sampling_params import SamplingParams
from moecloud.engine.structured import StructuredOutput

__all__ = [
    "LLM",
    "CheckpointError",
    "CompletionOutput",
    "EngineConfig",
    "EngineStats",
    "LLMEngine",
    "Logprob",
    "ModelConfig",
    "PromptTooLong",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutput",
    "UnsupportedConfig",
]
