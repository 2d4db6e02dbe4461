"""HOPE: self-modifying Titans followed by a Continuum Memory System (Nested Learning, NeurIPS 2025).

One block (HOPE spec section 1):  h = x + Mixer(RMSNorm(x));  h = h + MLP_l(RMSNorm_l(h)) for each CMS level l.
All recurrent state lives in `HopeCache`; a forward without a cache uses a temporary one, so one forward, a prefill
followed by single tokens, and any other split of a sequence compute the same thing (spec 4.1).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache_hope import HopeCache
from .configuration_hope import HopeConfig
from .continuum_memory import WEIGHT_NAMES, SwiGLU, eager_autograd, plain_linears, swiglu_per_row, teach_gradients
from .fast_weight_memory import MEMORY_SCANS, PROJECTION_SCANS, FastWeights, chunked_fused_scan
from .lm_head import RoundLogits, TeachProducts, causal_lm_loss
from .memory_cpu import disabled as cpu_kernel_disabled
from .memory_triton import applies as kernel_applies
from .memory_triton import fused_scan as kernel_fused_scan

BOXES = ("k", "v", "eta", "alpha")


class HopeRMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (as Llama's)."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x):
        # float32: one F.rms_norm call with the weight; other dtypes keep Llama's order (normalise in float32,
        # cast back, then scale)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            if _cpu_float32_autograd(x):
                return RMSNormFunction.apply(x, self.weight, self.variance_epsilon)
            return F.rms_norm(x, x.shape[-1:], self.weight, eps=self.variance_epsilon)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.variance_epsilon).to(x.dtype)


def _cpu_float32_autograd(*tensors) -> bool:
    """Where the norms' nodes below replace F.rms_norm under autograd: float32 on the CPU (elsewhere F.rms_norm may
    be one fused kernel with a backward of its own), eager (see `eager_autograd`)."""
    return eager_autograd() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


class RMSNormFunction(torch.autograd.Function):
    """F.rms_norm's values with a backward that keeps only x: y = x r w with r = 1 / rms(x), so
    dx = r (dy w - x r mean(dy w x r)) and dw = sum dy x r. On the CPU, F.rms_norm is composed of elementwise
    operations whose autograd keeps x r besides x (one more activation per norm) and runs six nodes backward."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return F.rms_norm(x, x.shape[-1:], weight, eps=eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return (*_rms_norm_backward(g, *ctx.saved_tensors, ctx.eps), None)


def _rms_norm_backward(g, x, weight, eps):
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    xn = x * r
    gy = g * weight
    g_x = (gy - xn * (gy * xn).mean(-1, keepdim=True)).mul_(r)
    return g_x, (g * xn).reshape(-1, x.shape[-1]).sum(0)


class NormGateFunction(torch.autograd.Function):
    """The mixer's output gate, p = merge_heads(RMSNorm(o)) * silu(gate), keeping o and gate only (autograd kept
    the normalised and merged o, silu(gate) and gate: two activations more) and recomputing the rest in backward.
    o (B, H, L, d_h), gate (B, L, H d_h)."""

    @staticmethod
    def forward(ctx, o, weight, gate, eps):
        ctx.save_for_backward(o, weight, gate)
        ctx.eps = eps
        return _merge_heads(F.rms_norm(o, o.shape[-1:], weight, eps=eps)) * F.silu(gate)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        o, weight, gate = ctx.saved_tensors
        merged = _merge_heads(F.rms_norm(o, o.shape[-1:], weight, eps=ctx.eps))
        g_merged = (g * F.silu(gate)).view(*g.shape[:2], o.shape[1], o.shape[3]).transpose(1, 2)
        g_o, g_w = _rms_norm_backward(g_merged, o, weight, ctx.eps)
        return g_o, g_w, torch.ops.aten.silu_backward(g * merged, gate), None


def _merge_heads(o):
    """(B, H, L, d_h) -> (B, L, H d_h)."""
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


def l2norm(x):
    """x / max(||x||, 1e-6) (F.normalize's values); under autograd, `L2NormFunction`."""
    if eager_autograd() and x.requires_grad:
        return L2NormFunction.apply(x)
    return F.normalize(x, dim=-1, eps=L2NormFunction.EPS)


class L2NormFunction(torch.autograd.Function):
    """y = x / n with n = max(||x||, eps), keeping y and n for backward (dx = (dy - y (y . dy)) / n; n = eps where
    ||x|| < eps, and there no projection), not x: y is what the consumers (the memories' chunk nodes) keep anyway,
    and x, a view of a projection memory's read of all four boxes, would keep that whole read alive."""

    EPS = 1e-6

    @staticmethod
    def forward(ctx, x):
        n = x.norm(2, -1, keepdim=True).clamp_min(L2NormFunction.EPS)
        y = x / n
        ctx.save_for_backward(y, n)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        y, n = ctx.saved_tensors
        projection = (y * g).sum(-1, keepdim=True) * (n > L2NormFunction.EPS)
        return (g - y * projection) / n


def gather_rows(x, idx):
    """x (B, L, ...) -> x[b, idx[b, j]] (B, J, ...)."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:]))


class ShortConv(nn.Module):
    """Causal depthwise convolution over each row's real tokens, continuing from the last `size - 1` cached inputs."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, size))

    def forward(self, x, lengths, state, source=None):
        """`source` = (z, W) with x = z W^T (a bias-free projection): backward recomputes x instead of keeping it."""
        size, L = self.weight.shape[1], x.shape[1]
        xs = torch.cat([state.to(x.dtype), x], 1)
        if torch.compiler.is_compiling():  # inductor fuses the taps and chooses what backward keeps
            out = causal_taps(xs, self.weight.t(), L)
        else:
            recompute = (*source, state) if source is not None and eager_autograd() else ()
            out = ShortConvFunction.apply(xs, self.weight, L, *recompute)
        if int(lengths.min()) == L:  # every row full: the tail is the last size - 1 inputs (counted from the end of
            # xs: a start of L made inductor lose L's shape symbol), copied: a view would keep all of xs alive
            new_state = xs[:, xs.shape[1] - (size - 1):].clone()
        else:
            new_state = gather_rows(xs, lengths[:, None] + torch.arange(size - 1, device=x.device))
        return out, new_state


def causal_taps(xs, taps, L: int, inplace: bool = False):
    """out_t = sum_k taps[k] * xs_{t+k}, t < L; taps (size, C)."""
    out = xs[:, :L] * taps[0]
    for k in range(1, len(taps)):
        out = out.addcmul_(xs[:, k:k + L], taps[k]) if inplace else out.addcmul(xs[:, k:k + L], taps[k])
    return out


class ShortConvFunction(torch.autograd.Function):
    """out_t = sum_k w_k * xs_{t+k} over the cached tail and the new inputs xs (B, size - 1 + L, C): a few shifted
    products beat depthwise conv1d here (its backward above all, and a decoded token's L = 1 call) and keep the
    (B, L, C) layout. Autograd through the shifted slices would write each one's gradient into zeros of the whole
    xs and add them up; this backward accumulates them in one buffer. Given the projection that made the new inputs
    (z, W, and the tail), it keeps those instead of xs and recomputes xs = [tail; z W^T] in backward: z is kept for
    the projection's own backward anyway, and xs, five times the model width, is the mixer's widest activation."""

    @staticmethod
    def forward(ctx, xs, weight, L, z=None, W=None, tail=None):
        if z is None:
            ctx.save_for_backward(weight, xs)
        else:
            ctx.save_for_backward(weight, z, W, tail)
            device = xs.device.type  # the recomputation runs under the forward's autocast
            ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        # (size, C): each tap's weights contiguous, not strided by the size
        return causal_taps(xs, weight.t().contiguous(), L, inplace=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        weight, *saved = ctx.saved_tensors
        if len(saved) == 1:
            xs = saved[0]
        else:
            z, W, tail = saved
            device, enabled, dtype = ctx.autocast
            with torch.autocast(device, dtype=dtype, enabled=enabled):
                x = F.linear(z, W)
            xs = torch.cat([tail.to(x.dtype), x], 1)
        L = g.shape[1]
        taps = weight.t().contiguous()
        g_xs = g.new_zeros(xs.shape)
        g_w = torch.stack([(g * xs[:, k:k + L]).sum((0, 1)) for k in range(len(taps))], 1)
        for k in range(len(taps)):
            g_xs[:, k:k + L].addcmul_(g, taps[k])
        return g_xs.to(xs.dtype), g_w.to(weight.dtype), None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Mixers
# ----------------------------------------------------------------------------------------------------------------


class HopeMemoryMixer(nn.Module):
    """Self-modifying Titans (spec section 2), and the Titans LMM when no projection is adaptive.

    q_t = l2norm(silu(conv(x W_q))); u_box = conv(x W_box) for box in k, v, eta, alpha;
    k = l2norm(M_k(u_k)), v = l2norm(M_v(u_v)) (`value_norm`), eta = eta_max sigmoid(w_eta . M_eta(u_eta) + b_eta),
    alpha = sigmoid(w_alpha . M_alpha(u_alpha) + b_alpha) (static boxes skip their memory);
    every memory learns on ||M(k_t) - M(v_t)||^2 (or v_t for Titans) at the rate eta_t / C (C its chunk size: a
    chunk's updates are all taken at its start weights and add up); o_t = M_mem(q_t);
    out = W_o (RMSNorm(o_t) * silu(x W_gate)).
    """

    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        d, H = config.hidden_size, config.num_attention_heads
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = H, d // H
        R = config.memory_expansion * self.head_dim
        self.adaptive = tuple(box in config.adaptive_projections for box in BOXES)
        n_adaptive = sum(self.adaptive)
        self.in_proj = nn.Linear(d, 5 * d, bias=False)
        self.conv = ShortConv(5 * d, config.conv_size) if config.conv_size > 0 else None
        self.eta_weight = nn.Parameter(torch.empty(H, self.head_dim))
        self.eta_bias = nn.Parameter(torch.empty(H))
        if config.use_weight_decay:
            self.alpha_weight = nn.Parameter(torch.empty(H, self.head_dim))
            self.alpha_bias = nn.Parameter(torch.empty(H))
        else:
            self.alpha_weight = self.alpha_bias = None
        self.beta_logit = nn.Parameter(torch.empty(H)) if config.use_momentum else None
        # initial fast weights, meta-learned by the outer optimizer
        self.mem_W1 = nn.Parameter(torch.empty(H, self.head_dim, R))
        self.mem_W2 = nn.Parameter(torch.empty(H, R, self.head_dim))
        if n_adaptive:
            self.proj_W1 = nn.Parameter(torch.empty(n_adaptive * H, self.head_dim, R))
            self.proj_W2 = nn.Parameter(torch.empty(n_adaptive * H, R, self.head_dim))
        else:
            self.proj_W1 = self.proj_W2 = None
        self.o_norm = HopeRMSNorm(self.head_dim, config.rms_norm_eps)
        self.gate_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def initial_fast_weights(self):
        """The memories' initial weights stacked as (P, H, ...): the adaptive projection memories, then M_mem."""
        H, d = self.num_heads, self.head_dim
        W1s, W2s = [self.mem_W1[None]], [self.mem_W2[None]]
        if self.proj_W1 is not None:
            W1s.insert(0, self.proj_W1.view(-1, H, d, self.proj_W1.shape[-1]))
            W2s.insert(0, self.proj_W2.view(-1, H, self.proj_W2.shape[-2], d))
        return torch.cat(W1s), torch.cat(W2s)

    def init_state(self, batch_size: int) -> dict:
        state = {}
        if self.conv is not None:
            size, channels = self.conv.weight.shape[1], self.conv.weight.shape[0]
            state["conv"] = self.in_proj.weight.new_zeros(batch_size, size - 1, channels)
        W1, W2 = self.initial_fast_weights()
        W1b, W2b = W1.expand(batch_size, *W1.shape), W2.expand(batch_size, *W2.shape)
        zeros1, zeros2 = W1.new_zeros(batch_size, *W1.shape), W2.new_zeros(batch_size, *W2.shape)
        for field, value in zip(FastWeights._fields, (W1b, W2b, W1b, W2b, zeros1, zeros2)):
            state[f"memory.{field}"] = value
        return state

    def _heads(self, x):
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

    def _produce(self, outs):
        """Outputs of the k, v, eta, alpha boxes (B, 4, H, T, d) -> keys, values, eta, log_alpha."""
        # unbind, not four selects: a select's backward writes into zeros of the whole (B, 4, H, T, d)
        k_box, v_box, eta_box, alpha_box = outs.unbind(1)
        if eager_autograd():  # the rates' products keep their inputs for backward: copies of two boxes, not
            eta_box, alpha_box = eta_box.clone(), alpha_box.clone()  # views that keep the read of all four alive
        keys, values = l2norm(k_box), v_box
        if self.config.value_norm:
            values = l2norm(values)
        eta_logit = (eta_box * self.eta_weight[:, None]).sum(-1) + self.eta_bias[:, None]
        eta = self.config.eta_max * torch.sigmoid(eta_logit)
        if self.config.use_weight_decay:
            log_alpha = F.logsigmoid((alpha_box * self.alpha_weight[:, None]).sum(-1) + self.alpha_bias[:, None])
        else:
            log_alpha = torch.zeros_like(eta)
        return keys, values, eta, log_alpha

    def _separate_scans(self, memory, q, inputs, log_beta, mask, counts, common):
        """Projection memories over the whole call, then the output memory (chunk sizes differ, or naive path)."""
        cfg = self.config
        n = sum(self.adaptive)
        if n:
            proj = FastWeights(*(t[:, :n].flatten(1, 2) for t in memory))
            *produced, proj = PROJECTION_SCANS[cfg.memory_impl](
                proj, inputs, self.adaptive, self._produce, log_beta, mask, counts, cfg.projection_chunk_size,
                lr_scale=1.0 / cfg.projection_chunk_size, **common)
        else:
            produced = self._produce(inputs)
        keys, values, eta, log_alpha = produced
        mem = FastWeights(*(t[:, -1] for t in memory))
        o, mem = MEMORY_SCANS[cfg.memory_impl](mem, q, keys, values, eta, log_alpha, log_beta, mask, counts,
                                               cfg.memory_chunk_size, lr_scale=1.0 / cfg.memory_chunk_size, **common)
        if n:
            return o, FastWeights(*(torch.cat([p.unflatten(1, (n, -1)), m[:, None]], 1) for p, m in zip(proj, mem)))
        return o, FastWeights(*(m[:, None] for m in mem))

    def forward(self, x, mask, counts, state):
        cfg = self.config
        lengths = mask.sum(-1)
        new_state = {}
        u = self.in_proj(x)
        if self.conv is not None:
            source = (x, self.in_proj.weight) if plain_linears(self.in_proj) else None
            u, new_state["conv"] = self.conv(u, lengths, state["conv"], source)
        q, *boxes = (self._heads(part) for part in u.split(x.shape[-1], -1))
        # silu saves its input for backward: a copy of q, not a view that keeps all five projections alive
        q = l2norm(F.silu(q.contiguous()))
        inputs = torch.stack(boxes, 1)  # (B, 4, H, L, d)
        log_beta = F.logsigmoid(self.beta_logit) if self.beta_logit is not None else None
        common = dict(act=cfg.memory_activation, dgd=1.0 if cfg.use_dgd else 0.0,
                      self_generated=cfg.self_generated_values)
        if cfg.memory_impl == "chunked":
            common.update(recompute=cfg.memory_recompute, compile=cfg.compile_memory)
        memory = FastWeights(*(state[f"memory.{f}"] for f in FastWeights._fields))
        C, Cp = cfg.memory_chunk_size, cfg.projection_chunk_size
        if cfg.memory_impl == "chunked" and cfg.memory_kernel == "auto" and kernel_applies(inputs, C, Cp):
            o, memory = kernel_fused_scan(
                memory, q, inputs, self.adaptive, self.eta_weight, self.eta_bias, self.alpha_weight, self.alpha_bias,
                log_beta, mask, counts, C, cfg.eta_max, cfg.value_norm, common["act"], common["dgd"],
                common["self_generated"], lr_scale=1.0 / C)
        elif cfg.memory_impl == "chunked" and C == Cp:
            o, memory = chunked_fused_scan(memory, q, inputs, self.adaptive, self._produce, log_beta, mask, counts,
                                           C, lr_scale=1.0 / C, **common)
        else:
            o, memory = self._separate_scans(memory, q, inputs, log_beta, mask, counts, common)
        new_state.update({f"memory.{f}": t for f, t in zip(FastWeights._fields, memory)})
        gate = self.gate_proj(x)
        if _cpu_float32_autograd(o, gate, self.o_norm.weight):
            gated = NormGateFunction.apply(o, self.o_norm.weight, gate, self.o_norm.variance_epsilon)
        else:
            gated = _merge_heads(self.o_norm(o)) * F.silu(gate)
        return self.o_proj(gated), new_state


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class HopeAttention(nn.Module):
    """Hope-Attention: causal softmax attention with RoPE (Llama's), keys and values kept in the HopeCache."""

    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        d, H, Hkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.num_heads, self.num_kv_heads, self.head_dim = H, Hkv, d // H
        self.q_proj = nn.Linear(d, H * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, Hkv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, Hkv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(H * self.head_dim, d, bias=False)
        self.rope_theta = config.rope_theta
        self.register_buffer("inv_freq", self.rope_frequencies(), persistent=False)

    def rope_frequencies(self):
        d = self.head_dim
        return 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))

    def init_state(self, batch_size: int) -> dict:
        w = self.k_proj.weight
        return {"keys": w.new_zeros(batch_size, self.num_kv_heads, 0, self.head_dim),
                "values": w.new_zeros(batch_size, self.num_kv_heads, 0, self.head_dim),
                "key_mask": torch.zeros(batch_size, 0, dtype=torch.bool, device=w.device)}

    def forward(self, x, mask, counts, state):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, -1, self.head_dim).transpose(1, 2)
        positions = counts[:, None] + torch.arange(L, device=x.device)
        freqs = positions[..., None].float() * self.inv_freq.to(x.device)
        emb = torch.cat((freqs, freqs), -1)[:, None]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        keys = torch.cat([state["keys"], k], 2)
        values = torch.cat([state["values"], v], 2)
        key_mask = torch.cat([state["key_mask"], mask], 1)
        past = state["keys"].shape[2]
        causal = torch.ones(L, past + L, dtype=torch.bool, device=x.device).tril(past)
        allowed = causal[None] & key_mask[:, None, :]
        allowed[:, :, past:] |= torch.eye(L, dtype=torch.bool, device=x.device)  # keeps pad queries finite
        rep = self.num_heads // self.num_kv_heads
        out = F.scaled_dot_product_attention(q, keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1),
                                             attn_mask=allowed[:, None])
        out = self.o_proj(out.transpose(1, 2).reshape(B, L, -1))
        return out, {"keys": keys, "values": values, "key_mask": key_mask}


# ----------------------------------------------------------------------------------------------------------------
# Blocks and models
# ----------------------------------------------------------------------------------------------------------------


class HopeCMSLevel(nn.Module):
    """One pre-norm residual SwiGLU level of the Continuum Memory System."""

    def __init__(self, config: HopeConfig, level: dict):
        super().__init__()
        self.norm = HopeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, level["intermediate_size"])
        self.period, self.lr = level["period"], level["lr"]


class HopeDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: HopeConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = HopeRMSNorm(config.hidden_size, config.rms_norm_eps)
        mixer_cls = HopeAttention if config.mixer_type == "attention" else HopeMemoryMixer
        self.mixer = mixer_cls(config, layer_idx)
        self.cms = nn.ModuleList([HopeCMSLevel(config, level) for level in config.cms_levels])

    def init_state(self, batch_size: int) -> dict:
        state = self.mixer.init_state(batch_size)
        for l, level in enumerate(self.cms):
            if level.period == 0:
                continue
            mlp = level.mlp
            for name, w in zip(WEIGHT_NAMES, (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)):
                state[f"cms{l}.{name}"] = w.expand(batch_size, *w.shape)
                state[f"cms{l}.grad_{name}"] = w.detach().new_zeros(batch_size, *w.shape)
            d, I = mlp.down_proj.weight.shape
            w = mlp.down_proj.weight.detach()
            state.update({f"cms{l}.pend_z": w.new_zeros(batch_size, d), f"cms{l}.pend_g": w.new_zeros(batch_size, I),
                          f"cms{l}.pend_v": w.new_zeros(batch_size, I), f"cms{l}.pend_down": w.new_zeros(batch_size, d, I)})
        return state

    def forward(self, x, mask, counts, state):
        """x (B, L, d) with real tokens first (mask (B, L)); returns the output, the new state and, for each
        in-context level, the activations (level, z, g, v) its teach-signal gradients need."""
        h, new_state = self.mixer(self.input_layernorm(x), mask, counts, state)
        h = x + h
        records = []
        for l, level in enumerate(self.cms):
            z = level.norm(h)
            if level.period == 0:
                h = h + level.mlp(z)
            else:
                out, g, v = swiglu_per_row(z, *(state[f"cms{l}.{name}"] for name in WEIGHT_NAMES))
                h = h + out
                records.append((l, z.detach(), g.detach(), v.detach()))
        return h, {**state, **new_state}, records


class HopePreTrainedModel(PreTrainedModel):
    config_class = HopeConfig
    config: HopeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HopeDecoderLayer"]
    _is_stateful = True
    _supports_sdpa = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, HopeRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, HopeAttention):
            # a non-persistent buffer: from_pretrained builds the model on the meta device and leaves it
            # uninitialised unless it is set here (as transformers does for its RotaryEmbedding modules)
            init.copy_(module.inv_freq, module.rope_frequencies())
        elif isinstance(module, ShortConv):
            init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.weight.shape[1]))
        elif isinstance(module, HopeMemoryMixer):
            for W1, W2 in ((module.mem_W1, module.mem_W2), (module.proj_W1, module.proj_W2)):
                if W1 is not None:
                    init.normal_(W2, mean=0.0, std=1.0 / math.sqrt(W2.shape[-1]))
                    init.normal_(W1, mean=0.0, std=0.5 / math.sqrt(W1.shape[-1]))
            init.normal_(module.eta_weight, mean=0.0, std=std)
            init.constant_(module.eta_bias, -2.0)  # eta ~ 0.12 eta_max
            if module.alpha_weight is not None:
                init.normal_(module.alpha_weight, mean=0.0, std=std)
                init.constant_(module.alpha_bias, 6.0)  # alpha ~ 0.9975: keep most of the memory per token
            if module.beta_logit is not None:
                init.constant_(module.beta_logit, 1.0)  # beta ~ 0.73


class HopeModel(HopePreTrainedModel):
    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([HopeDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = HopeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    # -- cache --------------------------------------------------------------------------------------------------

    def _prepare_cache(self, cache, batch_size: int, device) -> HopeCache:
        if cache is None:
            cache = HopeCache(self.config)
        elif not isinstance(cache, HopeCache):
            raise TypeError(f"HOPE keeps its state in a HopeCache, got a {type(cache).__name__}")
        cache.check_compatible(self.config, batch_size)
        if not cache.initialized:
            for layer_state, layer in zip(cache.layers, self.layers):
                layer_state.tensors = layer.init_state(batch_size)
            shared = {"counts": torch.zeros(batch_size, dtype=torch.long, device=device)}
            if self.config.in_context_levels:
                shared["pending"] = torch.zeros(batch_size, dtype=torch.bool, device=device)
                shared["pending_h"] = self.norm.weight.detach().new_zeros(batch_size, self.config.hidden_size)
            cache.shared.tensors = shared
        return cache

    def _new_token_mask(self, attention_mask, batch_size: int, length: int, cache: HopeCache, device):
        if attention_mask is None:
            return torch.ones(batch_size, length, dtype=torch.bool, device=device)
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size:
            raise ValueError(f"attention_mask must have shape (batch, columns), got {tuple(attention_mask.shape)}")
        width = attention_mask.shape[1]
        if width not in (length, cache.seen_columns + length):
            raise ValueError(f"attention_mask has {width} columns; expected {length} (the new tokens) or "
                             f"{cache.seen_columns + length} (the cached and the new ones)")
        return attention_mask[:, -length:].to(device).bool()

    # -- forward ------------------------------------------------------------------------------------------------

    def _layers(self, x, mask, cache: HopeCache):
        counts = cache.counts
        records = []
        with cpu_kernel_disabled(self.config.memory_kernel == "torch"):
            for layer, layer_state in zip(self.layers, cache.layers):
                x, layer_state.tensors, rec = layer(x, mask, counts, layer_state.tensors)
                records.append(rec)
        return x, records

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, use_cache=None,
                teach_signal=None, past_key_values=None, **kwargs):
        """Runs the layers over the new tokens. `teach_signal(h, targets, whole_round=False)` returns the loss
        gradient at the residual stream for the in-context CMS levels (HopeForCausalLM supplies it; h is the
        rounds' output, still in the autograd graph). `whole_round` says that h is the whole next slice of the
        positions, in order, so the caller may keep what it computed on it (the LM head's logits)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        if cache is None:
            cache = past_key_values
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
            if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
                raise ValueError(f"input_ids contain token ids outside the vocabulary [0, {self.vocab_size}): "
                                 f"min {int(input_ids.min())}, max {int(input_ids.max())}")
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        B, L, _ = inputs_embeds.shape
        device = inputs_embeds.device
        cache = self._prepare_cache(cache, B, device)
        mask = self._new_token_mask(attention_mask, B, L, cache, device)

        # compact: each row's real tokens first, in order; pads after them are no-ops everywhere
        lengths = mask.sum(1)
        order = None if bool(mask.all()) else torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
        x = inputs_embeds if order is None else gather_rows(inputs_embeds, order)
        ids = input_ids if order is None or input_ids is None else gather_rows(input_ids, order)
        if self.config.in_context_levels:
            h = self._rounds(x, lengths, ids, cache, teach_signal)
        else:
            compact_mask = torch.arange(L, device=device)[None] < lengths[:, None]
            h, _ = self._layers(x, compact_mask, cache)
            cache.shared.tensors["counts"] = cache.counts + lengths
        cache.seen_columns += L
        if order is not None:  # back to the input order (a gather: inductor's CPU codegen fails on the scatter
            h = gather_rows(h, order.argsort(1))  # into empty_like this was, when fused with the norm)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h), cache=cache if use_cache else None)

    def _rounds(self, x, lengths, ids, cache: HopeCache, teach_signal):
        """In-context CMS levels step after every `period` real tokens of a row, using gradients that come from the
        top of the network; so the tokens run through all layers in rounds that end at a level boundary."""
        if teach_signal is None or ids is None:
            raise ValueError("In-context CMS levels (period > 0) learn from the next-token loss: run them through "
                             "HopeForCausalLM with input_ids")
        B, L, _ = x.shape
        device = x.device
        periods = torch.tensor([self.config.cms_levels[l]["period"] for l in self.config.in_context_levels],
                               device=device)
        pos = torch.zeros_like(lengths)
        # rows in step (all full, same count: training, one sequence decoding): every round is a slice of x
        in_step = L > 0 and int(lengths.min()) == L and bool((cache.counts == cache.counts[0]).all())
        out_idx, out_h = [], []
        while bool((pos < lengths).any()):
            counts = cache.counts
            to_boundary = (periods[None] - counts[:, None] % periods[None]).min(1).values
            take = torch.minimum(to_boundary, lengths - pos)
            j = torch.arange(int(take.max()), device=device)
            if in_step:
                first = int(pos[0])
                ids_r, x_r = ids[:, first:first + len(j)], x[:, first:first + len(j)]
                rmask = torch.ones(B, len(j), dtype=torch.bool, device=device)
            else:
                idx = (pos[:, None] + j).clamp(max=L - 1)
                rmask = j[None] < take[:, None]
                ids_r, x_r = ids.gather(1, idx), gather_rows(x, idx)
                out_idx.append(torch.where(rmask, idx, L))  # pads of the round go to a dropped extra column
            self._learn_pending(cache, ids_r[:, 0], take > 0, teach_signal)
            h, records = self._layers(x_r, rmask, cache)
            targets = torch.where(j[None] + 1 < take[:, None], ids_r.roll(-1, 1), -100)
            if bool((targets != -100).any()):
                delta = teach_signal(h, targets, whole_round=in_step)
            else:  # e.g. one decoded token: its target comes with the next call (pending)
                delta = None
            self._learn(cache, records, delta, take, h.detach())
            out_h.append(h)
            pos = pos + take
        if in_step:
            return out_h[0] if len(out_h) == 1 else torch.cat(out_h, 1)
        full = x.new_zeros(B, L + 1, x.shape[-1])
        full = full.scatter(1, torch.cat(out_idx, 1)[..., None].expand(-1, -1, x.shape[-1]), torch.cat(out_h, 1))
        return full[:, :L]

    @torch.no_grad()
    def _learn_pending(self, cache, first_ids, active, teach_signal):
        """The last position of the previous round gets its target now: add its contribution (taken at the weights
        that computed it) to the levels' accumulated gradients."""
        shared = cache.shared.tensors
        pending = shared["pending"] & active
        if not bool(pending.any()):
            return
        delta = teach_signal(shared["pending_h"][:, None], torch.where(pending, first_ids, -100)[:, None])
        for layer_state, layer in zip(cache.layers, self.layers):
            st = dict(layer_state.tensors)
            for l in self.config.in_context_levels:
                grads = teach_gradients(st[f"cms{l}.pend_z"][:, None], st[f"cms{l}.pend_g"][:, None],
                                        st[f"cms{l}.pend_v"][:, None], st[f"cms{l}.pend_down"], delta)
                for name, g in zip(WEIGHT_NAMES, grads):
                    st[f"cms{l}.grad_{name}"] = st[f"cms{l}.grad_{name}"] + g
            layer_state.tensors = st
        shared["pending"] = shared["pending"] & ~pending

    def _learn(self, cache, records, delta, take, h):
        """Accumulate the round's contributions (none when `delta` is None: no position of the round has its target
        yet), keep its last position pending, advance the counters and step the levels whose period boundary was
        reached: theta <- theta - lr * sum_t g_t."""
        rows = take > 0
        at_last = torch.arange(len(take), device=take.device), (take - 1).clamp(min=0)  # each row's last position
        shared = cache.shared.tensors
        counts = shared["counts"] + take
        shared["counts"] = counts
        shared["pending"] = shared["pending"] | rows
        shared["pending_h"] = torch.where(rows[:, None], h[at_last], shared["pending_h"])
        all_rows = bool(rows.all())  # selects only where some rows differ (decoding one token is mostly this)
        steps = {period: rows & (counts % period == 0)
                 for period in {self.config.cms_levels[l]["period"] for l in self.config.in_context_levels}}
        any_step = {period: bool(step.any()) for period, step in steps.items()}
        for layer_state, layer, recs in zip(cache.layers, self.layers, records):
            st = dict(layer_state.tensors)
            for l, z, g, v in recs:
                down = st[f"cms{l}.down"].detach()
                grads = teach_gradients(z, g, v, down, delta) if delta is not None else (None,) * 3
                for key, value in (("pend_z", z[at_last]), ("pend_g", g[at_last]), ("pend_v", v[at_last]),
                                   ("pend_down", down)):
                    keep = rows.view(-1, *([1] * (value.dim() - 1)))
                    st[f"cms{l}.{key}"] = value if all_rows else torch.where(keep, value, st[f"cms{l}.{key}"])
                level = layer.cms[l]
                step = steps[level.period].view(-1, 1, 1)
                for name, g_new in zip(WEIGHT_NAMES, grads):
                    acc = st[f"cms{l}.grad_{name}"] if g_new is None else st[f"cms{l}.grad_{name}"] + g_new
                    if any_step[level.period]:
                        st[f"cms{l}.{name}"] = torch.where(step, st[f"cms{l}.{name}"] - level.lr * acc,
                                                           st[f"cms{l}.{name}"])
                        acc = torch.where(step, torch.zeros_like(acc), acc)
                    st[f"cms{l}.grad_{name}"] = acc
            layer_state.tensors = st


class HopeForCausalLM(HopePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: HopeConfig):
        super().__init__(config)
        self.model = HopeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _head_and_teach_signal(self, h, targets, keep: bool = False, products: bool = False):
        """logits = lm_head(norm(h)) and the teach signal delta_t = d CE(logits_t, target_t) / d h_t at each position
        (zero where target is -100), in closed form (no autograd graph: it runs once per round, and once per decoded
        token): dy = (softmax(logits) - onehot(target)) W_lm, and through y = w * h * r with r = 1/rms(h),
        delta = r (w dy) - h r^3 mean(h * w dy). With `keep`, also norm(h) in the autograd graph (when grad is on) and
        the logits' log-sum-exp (float32), and with `products` the `TeachProducts` (for `HeadLogits` and the loss).
        Returns (y or None, logits, lse or None, TeachProducts or None, delta)."""
        norm = self.model.norm
        y = None
        if keep:
            with torch.enable_grad() if h.requires_grad else torch.no_grad():
                y = norm(h)
        logits = self.lm_head(norm(h) if y is None else y.detach())
        dtype = torch.promote_types(h.dtype, torch.float32)
        hf, lf = h.detach().to(dtype), logits.to(dtype)
        r = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        dlogits = torch.softmax(lf, -1)
        # softmax's largest value is exp(max - lse): two cheap reductions instead of a logsumexp pass
        lse = lf.amax(-1) - dlogits.amax(-1).log() if keep else None
        dlogits.scatter_add_(-1, targets.clamp(min=0)[..., None], -torch.ones_like(dlogits[..., :1]))
        unused = targets == -100
        if bool(unused.any()):  # a few rows (each round's last position): no pass over all the logits
            dlogits[unused] = 0
        weight = self.lm_head.weight
        d = dlogits.to(weight.dtype)
        dy = d @ weight
        teach = None
        if keep and products:  # the loss's backward takes these instead of forming the same products again
            acc = torch.promote_types(weight.dtype, torch.float32)  # summed over the rounds: not in autocast's bf16
            with torch.autocast(h.device.type, enabled=False):
                dW = (d.flatten(0, -2).mT @ y.detach().to(weight.dtype).flatten(0, -2)).to(acc)
            teach = TeachProducts(dy, dW, targets)
        g = dy.to(dtype) * norm.weight.to(dtype)
        return y, logits, lse, teach, (r * g - hf * r.pow(3) * (hf * g).mean(-1, keepdim=True)).to(h.dtype)

    def _teach_signal(self, h, targets):
        """The teach signal alone (see `_head_and_teach_signal`)."""
        return self._head_and_teach_signal(h, targets)[-1]

    @property
    def loss_function(self):
        """`causal_lm_loss` (the value of transformers' ForCausalLMLoss, without its log-softmax copy of the
        logits) unless one was set."""
        return getattr(self, "_loss_function", None) or causal_lm_loss

    @loss_function.setter
    def loss_function(self, value):
        self._loss_function = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, cache=None, labels=None,
                use_cache=None, logits_to_keep=0, past_key_values=None, **kwargs):
        # With in-context levels, every round already applies the LM head to its positions for the teach signal;
        # when all logits are wanted, the rounds write theirs into one tensor (and keep their norm outputs and
        # log-sum-exp for the backward and the loss) instead of a second head over the whole sequence.
        rounds = None
        if self.config.in_context_levels and isinstance(logits_to_keep, int) and logits_to_keep == 0:
            rounds = RoundLogits((input_ids if input_ids is not None else inputs_embeds).shape[1])

        # the loss will be differentiated through the head: the rounds form its products with their teach signal
        products = labels is not None and torch.is_grad_enabled() and self.loss_function is causal_lm_loss

        def teach_signal(h, targets, whole_round=False):
            y, logits, lse, teach, delta = self._head_and_teach_signal(h, targets, rounds is not None and whole_round,
                                                                       products)
            if y is not None:
                rounds.add(y, logits, lse, teach)
            return delta

        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                             cache=cache if cache is not None else past_key_values, use_cache=use_cache,
                             teach_signal=teach_signal if self.config.in_context_levels else None)
        kept = rounds.output(self.lm_head.weight) if rounds is not None else None
        teach = None
        if kept is not None:
            logits, lse, y, teach = kept
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            y = outputs.last_hidden_state[:, keep]
            logits, lse = self.lm_head(y), None
        loss = None
        if labels is not None:
            if self.loss_function is causal_lm_loss:
                kwargs.update(lse=lse, head=(y, self.lm_head.weight, teach) if self.lm_head.bias is None else None)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


__all__ = ["HopeForCausalLM", "HopeModel", "HopePreTrainedModel"]
