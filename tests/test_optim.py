"""Deep optimizers (issue 8): update rules against hand/direct transcriptions, training, checkpoints, wiring."""

import copy
import io
import itertools

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from modeling_hope.optim import (
    OPTIMIZER_NAMES,
    CombinedOptimizer,
    DeepMomentumGD,
    DeltaMomentum,
    M3,
    PreconditionedMomentum,
    build_optimizer,
    newton_schulz,
    orthogonalize,
)

NS_ABC = (3.4445, -4.7750, 2.0315)
# Learning rates that make each optimizer train the tiny Llama's hidden matrices (see test_lm_loss_decreases).
LM_LR = {"adamw": 3e-3, "muon": 1e-2, "m3": 1e-5, "dmgd": 3e-3, "delta_momentum": 0.5,
         "preconditioned_momentum": 1e-3}
LM_KW = {"m3": {"f": 2}}  # f = 2 so that short runs cross several slow-momentum boundaries


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def tokens(step=0):
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1000 + step))


def lm_step(model, opt, step=0):
    batch = tokens(step)
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


# ---------------------------------------------------------------------------------------------- update rules


def test_newton_schulz_approximates_polar_factor():
    gen = torch.Generator().manual_seed(0)
    for shape in [(5, 3), (3, 5), (4, 4)]:
        g = torch.randn(*shape, generator=gen)
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        o = newton_schulz(g)
        assert o.shape == g.shape
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.5 and s.max() < 1.3  # Muon's quintic: singular values pushed to about 1
        cos = torch.nn.functional.cosine_similarity(o.flatten(), (u @ vh).flatten(), dim=0)
        assert cos > 0.98
    v = torch.tensor([3.0, 4.0])
    assert torch.equal(orthogonalize(v), torch.tensor([0.6, 0.8]))  # 1-D: exact polar factor of a 1 x n matrix
    assert torch.equal(newton_schulz(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_delta_momentum_matches_hand_computed_update():
    vec = nn.Parameter(torch.tensor([1.0, 1.0]))
    mat = nn.Parameter(torch.arange(6.0).reshape(2, 3) / 10)
    mat0 = mat.detach().clone()
    opt = DeltaMomentum([vec, mat], lr=0.1, momentum=0.9, delta=0.5)
    g1 = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]])
    g2 = torch.tensor([[2.0, 1.0, -1.0], [1.0, 0.0, 1.0]])
    set_grads([vec, mat], [torch.tensor([3.0, 4.0]), g1])
    opt.step()
    set_grads([vec, mat], [torch.tensor([3.0, 4.0]), g2])
    opt.step()
    # Vector, by hand: b1 = g = [3, 4]; k = [0.6, 0.8]; b1.k = 5;
    # b2 = 0.9 b1 - 0.5 * 5 k + g = 1.4 * [3, 4] = [4.2, 5.6]; p = 1 - 0.1 * ([3, 4] + [4.2, 5.6]).
    assert torch.allclose(vec.detach(), torch.tensor([0.28, 0.04]), atol=1e-6)
    # Matrix: b2 = b1 (0.9 I - 0.5 K^T K) + g2 with K = g2 / ||g2||_F.
    k = g2 / g2.norm()
    b2 = g1 @ (0.9 * torch.eye(3) - 0.5 * k.T @ k) + g2
    assert torch.allclose(mat.detach(), mat0 - 0.1 * g1 - 0.1 * b2, atol=1e-6)
    assert torch.allclose(opt.state[mat]["momentum_buffer"], b2, atol=1e-6)
    # delta = 0 is heavy-ball momentum: b2 = 0.9 g1 + g2.
    p = nn.Parameter(torch.zeros(2, 3))
    opt = DeltaMomentum([p], lr=1.0, momentum=0.9, delta=0.0)
    for g in (g1, g2):
        set_grads([p], [g])
        opt.step()
    assert torch.allclose(p.detach(), -g1 - (0.9 * g1 + g2), atol=1e-6)


def test_preconditioned_momentum_matches_formula():
    p = nn.Parameter(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
    p0 = p.detach().clone()
    opt = PreconditionedMomentum([p], lr=0.01, momentum=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1)
    grads = [torch.tensor([[0.1, -0.2], [0.3, 0.0]]), torch.tensor([[0.2, 0.1], [-0.1, 0.4]])]
    expected, v, b = p0.clone(), torch.zeros(2, 2), torch.zeros(2, 2)
    for t, g in enumerate(grads, start=1):
        set_grads([p], [g])
        opt.step()
        v = 0.99 * v + 0.01 * g * g
        b = 0.9 * b + g / ((v / (1 - 0.99**t)).sqrt() + 1e-8)
        expected = expected * (1 - 0.01 * 0.1) - 0.01 * b
    assert torch.allclose(p.detach(), expected, atol=1e-6)


def test_dmgd_inner_step_is_gradient_descent_on_its_inner_loss():
    p = nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    opt = DeepMomentumGD([p], lr=0.01, momentum=0.8, inner_lr=0.3, hidden=5)
    gen = torch.Generator().manual_seed(1)
    set_grads([p], [torch.randn(3, 4, generator=gen)])
    opt.step()
    state = opt.state[p]
    assert state["mlp_in"].shape == (4, 5) and state["mlp_out"].shape == (5, 4)
    assert state["mlp_out"].abs().sum() > 0  # B starts at zero: the first inner step wrote into it
    a1, b1, p1 = state["mlp_in"].clone(), state["mlp_out"].clone(), p.detach().clone()
    g = torch.randn(3, 4, generator=gen)
    set_grads([p], [g])
    opt.step()
    # Reference: autograd on L2(A, B) = -<K + tanh(K A) B, K> / rows, one GD step with retention.
    k = g / g.pow(2).mean().sqrt()
    a, b = a1.clone().requires_grad_(), b1.clone().requires_grad_()
    inner_loss = -((k + torch.tanh(k @ a) @ b) * k).sum() / 3
    grad_a, grad_b = torch.autograd.grad(inner_loss, (a, b))
    a2, b2 = 0.8 * a1 - 0.3 * grad_a, 0.8 * b1 - 0.3 * grad_b
    assert torch.allclose(state["mlp_in"], a2, atol=1e-6)
    assert torch.allclose(state["mlp_out"], b2, atol=1e-6)
    assert torch.allclose(p.detach(), p1 - 0.01 * (k + torch.tanh(k @ a2) @ b2), atol=1e-6)
    assert not torch.allclose(state["mlp_in"], a1)


def test_dmgd_momentum_networks_change_while_training():
    model = tiny_llama()
    opt = build_optimizer(model, "dmgd", LM_LR["dmgd"])
    lm_step(model, opt, 0)
    inner = opt.optimizers[0]
    first = {p: (s["mlp_in"].clone(), s["mlp_out"].clone()) for p, s in inner.state.items()}
    assert len(first) == 14  # 7 matrices per layer (q, k, v, o, gate, up, down) x 2 layers
    for step in range(1, 4):
        lm_step(model, opt, step)
    for p, (a, b) in first.items():
        assert not torch.equal(inner.state[p]["mlp_in"], a)
        assert not torch.equal(inner.state[p]["mlp_out"], b)
        assert inner.state[p]["step"] == 4


def _ns_transcribed(m, steps=5):
    x = m / m.norm().clamp_min(1e-7)  # wide matrices only, as in the test below
    a, b, c = NS_ABC
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def _algorithm1(theta, grad_fn, n_steps, lr, beta1, beta2, beta3, alpha, f, eps, ns_steps):
    """Algorithm 1 of [NL-arXiv] section 7.2, line by line (each chunk's gradients counted once)."""
    m1, m2, v, g = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta), {}
    trajectory = []
    for k in itertools.count():
        m2 = m2 + beta3 * sum((g[i] for i in range((k - 1) * f + 1, k * f + 1) if i in g), torch.zeros_like(theta))
        o2 = _ns_transcribed(m2, ns_steps)
        for t in range(k * f + 1, (k + 1) * f + 1):
            if t > n_steps:
                return trajectory
            g[t] = grad_fn(theta)
            m1 = m1 + beta1 * g[t]
            v = v + beta2 * g[t] ** 2
            o1 = _ns_transcribed(m1, ns_steps)
            theta = theta - lr * (o1 + alpha * o2) / (v.sqrt() + eps)
            trajectory.append(theta)


def test_m3_matches_algorithm1_transcription():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 6, generator=gen), torch.randn(3, 6, generator=gen)
    theta0 = torch.randn(3, 4, generator=gen)

    def grad_fn(theta):
        theta = theta.detach().requires_grad_()
        (0.5 * (theta @ x - y).pow(2).sum()).backward()
        return theta.grad

    hp = dict(lr=0.01, beta1=0.9, beta2=0.95, beta3=0.5, alpha=0.7, f=3, eps=1e-8, ns_steps=5)
    reference = _algorithm1(theta0.clone(), grad_fn, 8, **hp)
    p = nn.Parameter(theta0.clone())
    opt = M3([p], **hp)
    for t in range(8):
        p.grad = grad_fn(p.detach())
        opt.step()
        assert torch.allclose(p.detach(), reference[t], rtol=1e-5, atol=1e-6), f"step {t + 1}"
    assert not torch.allclose(reference[-1], theta0)


def test_m3_slow_momentum_changes_only_every_f_steps():
    p, q = nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(5))  # a matrix and a vector
    opt = M3([p, q], lr=1e-3, beta3=0.5, f=3)
    gen = torch.Generator().manual_seed(0)
    grads, changed = [], []
    for t in range(1, 11):
        before = {x: {k: opt.state[x][k].clone() for k in ("slow_momentum", "slow_orth", "fast_momentum")}
                  for x in (p, q)} if t > 1 else None
        g = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
        grads.append(g[0])
        set_grads([p, q], g)
        opt.step()
        if before is not None:
            for x in (p, q):
                assert not torch.equal(opt.state[x]["fast_momentum"], before[x]["fast_momentum"])
                assert torch.equal(opt.state[x]["slow_momentum"], before[x]["slow_momentum"]) == \
                    torch.equal(opt.state[x]["slow_orth"], before[x]["slow_orth"])
            changed.append(not torch.equal(opt.state[p]["slow_momentum"], before[p]["slow_momentum"]))
        if t == 6:
            assert torch.allclose(opt.state[p]["slow_momentum"], 0.5 * sum(grads), atol=1e-6)
            assert torch.count_nonzero(opt.state[p]["grad_accum"]) == 0
    assert changed == [t % 3 == 0 for t in range(2, 11)]  # steps 2..10: only 3, 6, 9
    assert torch.allclose(opt.state[q]["slow_orth"], orthogonalize(opt.state[q]["slow_momentum"]))


# ---------------------------------------------------------------------------------------------- training


def _least_squares():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, generator=gen)
    y = torch.randn(4, 8, generator=gen) @ x + torch.randn(4, 1, generator=gen)
    w, b = nn.Parameter(torch.zeros(4, 8)), nn.Parameter(torch.zeros(4))
    return [w, b], lambda: 0.5 * (w @ x + b[:, None] - y).pow(2).mean()


@pytest.mark.parametrize("cls, lr, kw", [
    (DeltaMomentum, 0.1, {}),
    (PreconditionedMomentum, 0.02, {}),
    (DeepMomentumGD, 0.05, {}),
    (M3, 0.05, {"f": 3}),
])
def test_least_squares_loss_decreases(cls, lr, kw):
    params, loss_fn = _least_squares()  # a matrix and a vector (bias) parameter
    opt = cls(params, lr=lr, **kw)
    initial = loss_fn().item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().item() < 0.5 * initial
    assert all(torch.count_nonzero(p) > 0 for p in params)  # both the matrix and the vector moved


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_lm_loss_decreases(name):
    """The named optimizer alone trains a tiny Llama: for the Muon-family the AdamW part gets lr 0."""
    model = tiny_llama()
    extra = {} if name == "adamw" else {"adamw_lr": 0.0}
    opt = build_optimizer(model, name, LM_LR[name], **extra, **LM_KW.get(name, {}))
    embed = model.model.embed_tokens.weight.detach().clone()
    losses = [lm_step(model, opt, 0) for _ in range(12)]  # one fixed batch
    assert losses[-1] < losses[0] - 0.05, losses
    if name != "adamw":
        assert torch.equal(model.model.embed_tokens.weight, embed)  # only the hidden matrices were trained


def test_build_routes_hidden_matrices_and_the_rest_to_adamw():
    model = tiny_llama()
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, "muon", 1e-3, weight_decay=0.1)
    assert isinstance(opt, CombinedOptimizer)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    to_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert len(to_muon) == 14 and all(n.split(".")[-2].endswith("proj") and "layers" in n for n in to_muon)
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in adamw.param_groups)
    assert decay == {"model.embed_tokens.weight", "lm_head.weight"}
    assert all("norm" in n for n in no_decay) and len(no_decay) == 5
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert len(opt.param_groups) == 3 and opt.param_groups[0] is muon.param_groups[0]
    # Only nn.Linear weights are hidden matrices: 2-D kernels/gate vectors (as in HOPE) and N-D states are not.
    block = nn.Module()
    block.proj, block.norm = nn.Linear(6, 6), nn.LayerNorm(6)
    block.conv_kernel, block.gate = nn.Parameter(torch.zeros(6, 4)), nn.Parameter(torch.zeros(2, 3))
    block.memory_init = nn.Parameter(torch.zeros(2, 3, 3))
    inner, adamw = build_optimizer(block, "m3", 1e-3).optimizers
    assert inner.param_groups[0]["params"] == [block.proj.weight]
    assert [len(g["params"]) for g in adamw.param_groups] == [3, 3]  # kernel, gate, memory_init | 3 vectors
    plain = build_optimizer(model, "adamw", 1e-3)
    assert type(plain) is torch.optim.AdamW
    assert sum(len(g["params"]) for g in plain.param_groups) == len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_state_dict_round_trip_is_bit_identical(name):
    def make(model):
        return build_optimizer(model, name, LM_LR[name], weight_decay=0.01, adamw_lr=1e-3, **LM_KW.get(name, {})) \
            if name != "adamw" else build_optimizer(model, name, LM_LR[name], weight_decay=0.01)

    model = tiny_llama()
    opt = make(model)
    for step in range(3):  # m3 with f=2: the checkpoint falls in the middle of a chunk
        lm_step(model, opt, step)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)

    for step in range(3, 6):  # uninterrupted run
        lm_step(model, opt, step)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed, fresh = tiny_llama(seed=1), tiny_llama(seed=2)
    for m in (resumed, fresh):
        m.load_state_dict(checkpoint["model"])
    resumed_opt, fresh_opt = make(resumed), make(fresh)
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    for step in range(3, 6):
        lm_step(resumed, resumed_opt, step)
        lm_step(fresh, fresh_opt, step)
    for (n, a), b, c in zip(model.named_parameters(), resumed.parameters(), fresh.parameters()):
        assert torch.equal(a, b), n
    # The state matters: the same continuation from a fresh optimizer ends elsewhere.
    assert not all(torch.equal(a, c) for a, c in zip(model.parameters(), fresh.parameters()))


# ---------------------------------------------------------------------------------------------- invalid input


def _vec():
    return [nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("make, bad", [
    (lambda: DeltaMomentum(_vec(), lr=-1e-3), "lr"),
    (lambda: DeltaMomentum(_vec(), delta=1.5), "delta"),
    (lambda: DeltaMomentum(_vec(), momentum=1.0), "momentum"),
    (lambda: PreconditionedMomentum(_vec(), lr=-1.0), "lr"),
    (lambda: PreconditionedMomentum(_vec(), beta2=1.0), "beta2"),
    (lambda: DeepMomentumGD(_vec(), lr=-1.0), "lr"),
    (lambda: DeepMomentumGD(_vec(), hidden=0), "hidden"),
    (lambda: DeepMomentumGD(_vec(), inner_lr=float("nan")), "inner_lr"),
    (lambda: M3(_vec(), lr=-1.0), "lr"),
    (lambda: M3(_vec(), f=0), "f"),
    (lambda: M3(_vec(), f=2.5), "f"),
    (lambda: M3(_vec(), beta1=1.0), "beta1"),
    (lambda: M3(_vec(), alpha=-0.1), "alpha"),
    (lambda: M3(_vec(), eps=-1.0), "eps"),
    (lambda: build_optimizer(tiny_llama(), "sgd", 1e-3), "name"),
    (lambda: build_optimizer(tiny_llama(), "muon", -1e-3), "lr"),
    (lambda: build_optimizer(tiny_llama(), "m3", 1e-3, f=0), "f"),
    (lambda: build_optimizer(tiny_llama(), "m3", 1e-3, weight_decay=-0.1), "weight_decay"),
    (lambda: build_optimizer(tiny_llama(), "adamw", 1e-3, betas=(0.9, 1.5)), r"betas\[1\]"),
    (lambda: build_optimizer(tiny_llama(), "dmgd", 1e-3, adamw_lr=-1.0), "adamw_lr"),
    (lambda: build_optimizer(tiny_llama(), "muon", 1e-3, f=3), "keyword: 'f'"),
])
def test_invalid_hyperparameters_raise_value_error_naming_them(make, bad):
    with pytest.raises(ValueError, match=f"Invalid {bad}"):
        make()


def test_combined_rejects_a_state_dict_of_another_layout():
    opt = build_optimizer(tiny_llama(), "m3", 1e-5)
    other = build_optimizer(tiny_llama(), "adamw", 1e-3).state_dict()
    other["param_groups"] = other["param_groups"][:1]
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(other)


# ---------------------------------------------------------------------------------------------- schedulers, Accelerate


def test_lambdalr_changes_reach_the_inner_optimizers():
    model = tiny_llama()
    opt = build_optimizer(model, "m3", 1e-5, adamw_lr=1e-3, f=2)
    factor = {"value": 0.0}
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor["value"])
    inner_lrs = [g["lr"] for o in opt.optimizers for g in o.param_groups]
    assert inner_lrs == [0.0, 0.0, 0.0]
    before = copy.deepcopy(model.state_dict())
    lm_step(model, opt)  # lr 0 everywhere: the state moves, the weights must not
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(s["step"] == 1 for s in opt.optimizers[0].state.values())
    factor["value"] = 0.5
    sched.step()
    assert [g["lr"] for o in opt.optimizers for g in o.param_groups] == [0.5e-5, 0.5e-3, 0.5e-3]
    lm_step(model, opt, 1)
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], model.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(before["model.norm.weight"], model.model.norm.weight)
    # The combined state_dict carries the scheduled lrs and they survive a reload (torch replaces group dicts).
    fresh = build_optimizer(tiny_llama(), "m3", 1e-5, adamw_lr=1e-3, f=2)
    fresh.load_state_dict(opt.state_dict())
    assert [g["lr"] for g in fresh.param_groups] == [0.5e-5, 0.5e-3, 0.5e-3]
    assert fresh.param_groups[0] is fresh.optimizers[0].param_groups[0]


def test_accelerate_prepare_train_save_and_resume(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = tiny_llama()
    opt = build_optimizer(model, "m3", 1e-5, adamw_lr=1e-3, f=2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    model, opt, sched = accelerator.prepare(model, opt, sched)

    def train(step):
        batch = tokens(step)
        loss = model(input_ids=batch, labels=batch).loss
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
        return loss.item()

    for step in range(3):
        train(step)
    assert [g["lr"] for g in opt.optimizer.optimizers[1].param_groups] == [1e-3 / 4, 1e-3 / 4]
    accelerator.save_state(str(tmp_path))
    for step in range(3, 5):
        train(step)
    expected = [p.detach().clone() for p in model.parameters()]
    accelerator.load_state(str(tmp_path))
    assert opt.optimizer.optimizers[0].state[model.model.layers[0].mlp.up_proj.weight]["step"] == 3
    for step in range(3, 5):
        train(step)
    assert all(torch.equal(a, b) for a, b in zip(expected, model.parameters()))
