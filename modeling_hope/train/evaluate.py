"""Validation loss and perplexity on the held-out blocks (split over the processes and summed exactly)."""

import math

import torch


@torch.no_grad()
def validation_loss(model, blocks: torch.Tensor, batch_size: int, accelerator) -> dict:
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = blocks[rank::world]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # summed loss, predicted tokens
    for i in range(0, len(rows), batch_size):
        x = rows[i:i + batch_size].to(accelerator.device).long()
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        n = x.shape[0] * (x.shape[1] - 1)
        total += torch.stack([loss.double() * n, torch.tensor(float(n), dtype=torch.float64, device=total.device)])
    model.train(was_training)
    if world > 1:
        total = accelerator.reduce(total, reduction="sum")
    loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_tokens": int(total[1].item())}
