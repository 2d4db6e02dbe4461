"""Conversion of Llama-family checkpoints into HOPE and of training checkpoints into Hub folders.

`llama.py` maps configs and weights (in memory), `levels.py` the CMS levels' initialisation, `weights.py` builds
a model from a state dict, `from_llama.py` and `checkpoint.py` the two `hope convert` commands, `hub.py` the atomic
Hub-folder writer (shared with `hope train`'s export), `card.py` the model cards, `push.py` `hope push`."""

from .levels import LevelSpec, parse_level
from .llama import hope_config_from_llama, llama_state_dict_to_hope, llama_to_hope

__all__ = ["LevelSpec", "hope_config_from_llama", "llama_state_dict_to_hope", "llama_to_hope", "parse_level"]
