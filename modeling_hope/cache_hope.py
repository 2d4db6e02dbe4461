"""HopeCache: all recurrent state of a HOPE model, per layer and per sequence (batch first)."""

import torch
from transformers.cache_utils import Cache


class HopeLayerState:
    """Named state tensors of one layer (fast weights, momenta, conv states, CMS weights, attention keys...).
    Every tensor is batch first, so beam search and `num_return_sequences` only index dimension 0."""

    is_compileable = False
    is_sliding = False
    supports_early_init = False
    is_croppable = False

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def _map(self, fn):
        self.tensors = {name: fn(t) for name, t in self.tensors.items()}

    def reorder_cache(self, beam_idx):
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int):
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        self._map(lambda t: t[indices])

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("HopeCache cannot be cropped: HOPE's memories have no per-token history to undo")

    def reset(self):
        self.tensors = {}

    def __repr__(self):
        return f"HopeLayerState({', '.join(f'{k}: {tuple(v.shape)}' for k, v in self.tensors.items())})"


def config_signature(config) -> tuple:
    """What a cache must agree on with the model that uses it."""
    return (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.mixer_type, config.memory_expansion, tuple(config.adaptive_projections),
            config.conv_size, tuple(tuple(sorted(level.items())) for level in config.cms_levels))


class HopeCache(Cache):
    """Recurrent state of HOPE: one `HopeLayerState` per layer plus `shared` (per-row token counters and the
    teach signal's pending position). `counts[b]` is the number of real (non-pad) tokens row b has seen;
    `get_seq_length()` is the number of columns seen (pads included), which is what `generate()` slices by."""

    is_compileable = False

    def __init__(self, config, batch_size: int | None = None, **kwargs):
        super().__init__(layers=[HopeLayerState() for _ in range(config.num_hidden_layers)])
        self.signature = config_signature(config)
        self.shared = HopeLayerState()
        self.seen_columns = 0
        self.expected_batch_size = batch_size

    @property
    def initialized(self) -> bool:
        return "counts" in self.shared.tensors

    @property
    def counts(self) -> torch.Tensor:
        return self.shared.tensors["counts"]

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0] if self.initialized else -1

    def check_compatible(self, config, batch_size: int):
        if self.signature != config_signature(config):
            raise ValueError("This HopeCache was built for a model with another configuration "
                             f"({self.signature}) than this one ({config_signature(config)}).")
        expected = self.batch_size if self.initialized else self.expected_batch_size
        if expected not in (None, -1) and expected != batch_size:
            raise ValueError(f"This HopeCache holds state for batch size {expected}, but the input has batch size "
                             f"{batch_size}.")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_columns

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0):
        return self.seen_columns + query_length, 0

    def _all(self):
        return [*self.layers, self.shared]

    def reorder_cache(self, beam_idx):
        for layer in self._all():
            layer.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int):
        for layer in self._all():
            layer.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices):
        for layer in self._all():
            layer.batch_select_indices(indices)

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("HopeCache cannot be cropped: HOPE's memories have no per-token history to undo")

    def reset(self):
        for layer in self._all():
            layer.reset()
        self.seen_columns = 0

    @property
    def is_croppable(self) -> bool:
        return False

    def nbytes(self) -> int:
        """Bytes held by the state (for the cache-size benchmarks)."""
        return sum(t.numel() * t.element_size() for layer in self._all() for t in layer.tensors.values())

    def __repr__(self):
        return f"HopeCache(batch={self.batch_size}, columns={self.seen_columns}, layers={len(self.layers)})"
