"""Configuration of HOPE (Nested Learning, NeurIPS 2025): self-modifying Titans + Continuum Memory System."""

from transformers import PreTrainedConfig

MIXER_TYPES = ("self_modifying_titans", "titans", "attention")
ADAPTIVE_CHOICES = ("k", "v", "eta", "alpha")
MEMORY_ACTIVATIONS = ("silu", "gelu")
MEMORY_IMPLS = ("chunked", "naive")
MEMORY_KERNELS = ("auto", "torch")
CMS_LEVEL_KEYS = {"intermediate_size", "period", "lr", "outer_period"}


class HopeConfig(PreTrainedConfig):
    r"""
    Configuration of [`HopeModel`] / [`HopeForCausalLM`]. Field names follow `LlamaConfig` where they mean the
    same thing; the memory and CMS fields are those of the HOPE spec (section 5).

    Args:
        mixer_type: `"self_modifying_titans"` (HOPE), `"titans"` (Titans LMM baseline) or `"attention"`
            (Hope-Attention: RoPE softmax attention in place of the memory).
        memory_expansion: hidden width ratio `r` of the residual two-layer memories `M(u) = u + W1 act(W2 u)`.
        memory_activation: `act` inside the memories (`"silu"` or `"gelu"`).
        memory_chunk_size / projection_chunk_size: tokens per inner-update chunk of the output memory and of the
            k, v, eta, alpha memories.
        conv_size: width of the causal depthwise convolutions after the input projections (0: none).
        use_dgd / use_momentum / use_weight_decay: switches of the inner rule
            `S_t = beta S_{t-1} - eta_t (grad + dgd (W a) a^T)`, `W_t = alpha_t W_{t-1} + S_t`.
        adaptive_projections: which of k, v, eta, alpha come from in-context memories (others are static).
        self_generated_values: each memory regresses onto its own `M(v_t)` (HOPE) instead of the plain `v_t`
            (Titans). Defaults to True for HOPE, False for Titans; `adaptive_projections=[]` with this False is
            exactly the Titans mixer.
        value_norm: l2-normalise the values `v_t` as the keys are. Defaults to True with self-generated targets:
            the target `M(v_t)` grows with the memory itself, and with `|v_t| > |k_t| = 1` the inner step
            amplifies the weights instead of contracting them (the run-away seen when training at length 512).
        eta_max: upper bound of the inner learning rate `eta_t = eta_max * sigmoid(...)`.
        cms_levels: the CMS chain, one dict per level: `intermediate_size`, `period` (tokens between in-context
            updates, 0 = static), `lr` (in-context step size) and `outer_period` (optimizer steps between outer
            updates of a static level).
        memory_impl: `"chunked"` (parallel dual form, the default) or `"naive"` (token-by-token reference).
        memory_recompute: chunks per recomputation segment of the memories' chunk loop in training (0: off). With
            k > 0 backward keeps only the fast-weight state every k chunks and recomputes the chunks in between:
            less activation memory (the long-context default to reach for), about one more forward of the loop.
        compile_memory: `torch.compile` the memories' per-chunk step (fused elementwise kernels; a graph per chunk
            shape, compiled on first use). `torch.compile(model)` leaves the chunk loop out of its graphs, so the
            two combine.
        memory_kernel: `"auto"` (the default) runs the self-modifying mixer's whole chunk loop as one Triton kernel
            (`memory_triton.py`) where it applies: on a GPU with Triton installed, without autograd (prefill,
            decoding, evaluation), rows unpadded and in step, equal chunk sizes; the PyTorch path otherwise. On the
            CPU it runs each chunk (forward and backward) and its coefficients in C++ (`memory_cpu.py`: float32,
            silu memories, outside autocast; built on first use where a C++ compiler is found). `"torch"`: always
            the PyTorch path.
    """

    model_type = "hope"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 32000
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    mixer_type: str = "self_modifying_titans"
    memory_expansion: int = 1
    memory_activation: str = "silu"
    memory_chunk_size: int = 64
    projection_chunk_size: int = 64
    conv_size: int = 4
    use_dgd: bool | None = None
    use_momentum: bool = True
    use_weight_decay: bool = True
    adaptive_projections: list | None = None
    self_generated_values: bool | None = None
    value_norm: bool | None = None
    eta_max: float = 0.5
    cms_levels: list | None = None
    memory_impl: str = "chunked"
    memory_recompute: int = 0
    compile_memory: bool = False
    memory_kernel: str = "auto"

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        is_titans = self.mixer_type == "titans"
        if self.use_dgd is None:
            self.use_dgd = not is_titans
        if self.adaptive_projections is None:
            self.adaptive_projections = [] if is_titans else [
                box for box in ADAPTIVE_CHOICES if box != "alpha" or self.use_weight_decay]
        if self.self_generated_values is None:
            self.self_generated_values = not is_titans
        if self.value_norm is None:
            self.value_norm = bool(self.self_generated_values)
        if self.cms_levels is None:
            self.cms_levels = [{"intermediate_size": 4 * self.hidden_size, "period": 0, "lr": 0.0, "outer_period": 1}]
        self.cms_levels = [dict({"period": 0, "lr": 0.0, "outer_period": 1}, **lvl) for lvl in self.cms_levels]
        self.adaptive_projections = list(self.adaptive_projections)
        self._check()
        super().__post_init__(**kwargs)

    def _check(self):
        def fail(field, msg):
            raise ValueError(f"HopeConfig.{field}: {msg}")

        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "memory_expansion", "memory_chunk_size", "projection_chunk_size", "max_position_embeddings"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(field, f"must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            fail("hidden_size", f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_key_value_heads", f"{self.num_key_value_heads} does not divide num_attention_heads")
        if self.mixer_type not in MIXER_TYPES:
            fail("mixer_type", f"{self.mixer_type!r} is not one of {MIXER_TYPES}")
        if self.memory_activation not in MEMORY_ACTIVATIONS:
            fail("memory_activation", f"{self.memory_activation!r} is not one of {MEMORY_ACTIVATIONS}")
        if self.memory_impl not in MEMORY_IMPLS:
            fail("memory_impl", f"{self.memory_impl!r} is not one of {MEMORY_IMPLS}")
        if self.memory_kernel not in MEMORY_KERNELS:
            fail("memory_kernel", f"{self.memory_kernel!r} is not one of {MEMORY_KERNELS}")
        if self.hidden_act != "silu":
            fail("hidden_act", f"only 'silu' (SwiGLU) levels are implemented, got {self.hidden_act!r}")
        if not isinstance(self.memory_recompute, int) or isinstance(self.memory_recompute, bool) \
                or self.memory_recompute < 0:
            fail("memory_recompute",
                 f"must be an integer >= 0 (chunks per segment, 0: off), got {self.memory_recompute!r}")
        if not isinstance(self.compile_memory, bool):
            fail("compile_memory", f"must be True or False, got {self.compile_memory!r}")
        if not isinstance(self.conv_size, int) or self.conv_size < 0:
            fail("conv_size", f"must be an integer >= 0, got {self.conv_size!r}")
        if not (self.rms_norm_eps > 0):
            fail("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps!r}")
        if not (self.eta_max > 0):
            fail("eta_max", f"must be > 0, got {self.eta_max!r}")
        bad = [p for p in self.adaptive_projections if p not in ADAPTIVE_CHOICES]
        if bad or len(set(self.adaptive_projections)) != len(self.adaptive_projections):
            fail("adaptive_projections", f"entries must be distinct values from {ADAPTIVE_CHOICES}, got {self.adaptive_projections}")
        if "alpha" in self.adaptive_projections and not self.use_weight_decay:
            fail("adaptive_projections", "'alpha' (the decay memory) needs use_weight_decay=True")
        if self.mixer_type == "titans" and (self.adaptive_projections or self.self_generated_values):
            fail("adaptive_projections", "mixer_type='titans' has static projections and plain targets; "
                 "use mixer_type='self_modifying_titans' for adaptive ones")
        if not isinstance(self.cms_levels, list) or not self.cms_levels:
            fail("cms_levels", "must be a non-empty list of level dicts")
        for i, lvl in enumerate(self.cms_levels):
            if not isinstance(lvl, dict) or set(lvl) != CMS_LEVEL_KEYS:
                fail("cms_levels", f"level {i} must have exactly the keys {sorted(CMS_LEVEL_KEYS)}, got {lvl!r}")
            if not isinstance(lvl["intermediate_size"], int) or lvl["intermediate_size"] < 1:
                fail("cms_levels", f"level {i}: intermediate_size must be a positive integer")
            if not isinstance(lvl["period"], int) or lvl["period"] < 0:
                fail("cms_levels", f"level {i}: period must be an integer >= 0 (0 = static)")
            if not isinstance(lvl["outer_period"], int) or lvl["outer_period"] < 1:
                fail("cms_levels", f"level {i}: outer_period must be an integer >= 1")
            if not isinstance(lvl["lr"], (int, float)) or lvl["lr"] < 0:
                fail("cms_levels", f"level {i}: lr must be a number >= 0")

    @property
    def in_context_levels(self) -> list[int]:
        return [i for i, lvl in enumerate(self.cms_levels) if lvl["period"] > 0]


__all__ = ["HopeConfig"]
