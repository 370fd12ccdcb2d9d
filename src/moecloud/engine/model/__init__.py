from moecloud.engine.model.deepseek import DeepseekForCausalLM

__all__ = ["DeepseekForCausalLM"]
