"""Conversion of Llama-family checkpoints into HOPE and of training checkpoints into Hub folders."""

from .llama import hope_config_from_llama, llama_state_dict_to_hope, llama_to_hope

__all__ = ["hope_config_from_llama", "llama_state_dict_to_hope", "llama_to_hope"]
