"""HOPE (Nested Learning: self-modifying Titans + Continuum Memory System) for Hugging Face transformers.

Importing the package registers the model with the Auto classes; saved folders carry the model code (remote code),
so they also load with `trust_remote_code=True` where the package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache_hope import HopeCache
from .configuration_hope import HopeConfig
from .modeling_hope import HopeForCausalLM, HopeModel, HopePreTrainedModel

AutoConfig.register("hope", HopeConfig, exist_ok=True)
AutoModel.register(HopeConfig, HopeModel, exist_ok=True)
AutoModelForCausalLM.register(HopeConfig, HopeForCausalLM, exist_ok=True)
HopeConfig.register_for_auto_class()
HopeModel.register_for_auto_class("AutoModel")
HopeForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["HopeCache", "HopeConfig", "HopeForCausalLM", "HopeModel", "HopePreTrainedModel"]
