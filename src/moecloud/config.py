"""The one settings object. This module is the only reader of the environment (prefix ``MOECLOUD_``).

Nested sections read ``MOECLOUD_<SECTION>__<FIELD>``, e.g. ``MOECLOUD_ENGINE__DTYPE=bfloat16``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseModel):
    dtype: str = Field("auto", description="float32 | bfloat16 | float16 | auto (bf16 on cuda, fp32 on cpu)")
    device: str = Field("auto", description="cpu | cuda | auto")
    quantization: str | None = Field(None, description="None or 'int8' (weight-only)")
    block_size: int = Field(16, ge=1, description="tokens per paged KV block")
    kv_cache_tokens: int = Field(65536, ge=16, description="latent KV cache capacity, in tokens")
    max_num_seqs: int = Field(64, ge=1, description="most sequences in one engine step")
    max_num_batched_tokens: int = Field(2048, ge=16, description="token budget of one engine step")
    max_model_len: int | None = Field(None, description="context cap; default: the model's own")
    enable_prefix_caching: bool = True
    max_waiting_requests: int = Field(1024, ge=1, description="queue bound before the server answers 429")


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
    served_model_name: str | None = None
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    max_tokens_default: int = Field(256, ge=1, description="max_tokens when a request gives none")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOECLOUD_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(Path("var"), description="where moecloud keeps its database, models and logs")
    model: str | None = Field(None, description="default model path for `moecloud serve`")
    engine: EngineSettings = EngineSettings()
    serving: ServingSettings = ServingSettings()


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)
