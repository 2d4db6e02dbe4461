import os
import tempfile

# Tests never touch the network or the user's Hugging Face cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hope-hf-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton's interpreter for the fused kernel's tests (tests/test_memory_triton.py), which run it on CPU tensors. It
# must be on before torch imports Triton; the model uses the kernel on the CPU only where a test turns it on.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

MIXERS = ("self_modifying_titans", "titans", "attention")


def tiny_config(**overrides):
    from modeling_hope import HopeConfig

    kwargs = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, memory_chunk_size=4,
                  projection_chunk_size=3, cms_levels=[{"intermediate_size": 24}], pad_token_id=0, bos_token_id=1,
                  eos_token_id=None, max_position_embeddings=512)
    kwargs.update(overrides)
    return HopeConfig(**kwargs)


def random_configs(n: int, seed: int = 0):
    """Small configs drawn at random, covering every mixer, in-context CMS levels, and chunk sizes that do not
    divide the test lengths."""
    rng = random.Random(seed)
    configs = []
    for i in range(n):
        mixer = MIXERS[i % len(MIXERS)]
        levels = [{"intermediate_size": rng.choice([16, 24])}]
        if i % 2 == 1:
            levels.append({"intermediate_size": 8, "period": rng.choice([2, 3, 5]), "lr": rng.choice([0.1, 0.5])})
        if i % 4 == 3:
            levels.insert(0, {"intermediate_size": 8, "period": rng.choice([4, 7]), "lr": 0.2})
        decay = rng.random() < 0.7
        adaptive = rng.sample(["k", "v", "eta", "alpha"], rng.randint(0, 4)) if mixer == "self_modifying_titans" else None
        if adaptive is not None and not decay:
            adaptive = [box for box in adaptive if box != "alpha"]
        configs.append(tiny_config(
            mixer_type=mixer, cms_levels=levels, memory_chunk_size=rng.choice([1, 3, 4, 5]),
            projection_chunk_size=rng.choice([1, 2, 3, 6]), memory_expansion=rng.choice([1, 2]),
            num_attention_heads=rng.choice([1, 2, 4]), num_key_value_heads=None,
            memory_activation=rng.choice(["silu", "gelu"]), conv_size=rng.choice([0, 2, 4]),
            adaptive_projections=adaptive, use_momentum=rng.random() < 0.7, use_weight_decay=decay))
    return configs


def build(config, seed: int = 0, dtype=torch.float32):
    from modeling_hope import HopeForCausalLM

    torch.manual_seed(seed)
    return HopeForCausalLM(config).to(dtype).eval()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny in-process runs: they gain nothing from a second thread, and on a busy 2-core
    machine two OpenMP threads per process slow everything down many times over; the setting is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    return tiny_config
