"""Model FLOPs utilisation of a training step: the floating-point operations the step really runs, counted by
torch's `FlopCounterMode` (matrix products, attention and convolutions, forward and backward; for HOPE this includes
the memories' in-context updates), over the step's time and the accelerator's peak rate. The counter charges causal
SDPA for the full square (as torch does), and elementwise work is not counted, so the figure is the matrix units'
utilisation by the step's matrix work."""

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) bf16 tensor-core peaks from the datasheets, TFLOP/s; matched against the device name.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}


def peak_tflops(device) -> float | None:
    """The datasheet's dense bf16 peak of `device`'s GPU, None on a CPU or an unknown card."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def train_step_flops(model, ids) -> int:
    """FLOPs of one forward+backward of the causal-LM loss on `ids`, as torch counts them."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def add_utilisation(train: dict, models: dict, seed: int, peak: float | None, max_length: int | None = None):
    """Adds flops_per_token (and mfu where `peak` TFLOP/s is known) to each model's entry of the train section, at
    lengths up to `max_length` (counting runs the step once more, with the counter's overhead on every operator)."""
    from .models import random_ids
    from .timing import free_memory

    for batch, by_length in train["by_batch"].items():
        for length, entry in by_length.items():
            if max_length and int(length) > max_length:
                continue
            for name, model in models.items():
                if "tokens_per_second" not in entry.get(name, {}):
                    continue
                ids = random_ids(model.config.vocab_size, int(batch), int(length), seed, model.device)
                try:
                    flops = train_step_flops(model, ids) / ids.numel()
                except torch.OutOfMemoryError:
                    flops = None
                if flops is None:
                    free_memory(models)
                    entry[name]["flops_per_token"] = None
                    continue
                entry[name]["flops_per_token"] = flops
                if peak:
                    entry[name]["mfu"] = flops * entry[name]["tokens_per_second"] / (peak * 1e12)
    train["utilisation"] = {"method": __doc__.replace("\n", " "), "peak_tflops": peak, "max_length": max_length}
