"""The final model as a Hub-ready folder: safetensors, config.json (with `auto_map` and the remote-code files for
HOPE), generation_config.json and the tokenizer; loadable with `AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` or `pipeline("text-generation", folder, trust_remote_code=True)`."""

import shutil
from pathlib import Path

from transformers import GenerationConfig


def generation_config(tokenizer) -> GenerationConfig:
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.8, top_k=50,
                            max_new_tokens=256)


def export_model(accelerator, model, tokenizer, out_dir, seq_len: int) -> Path:
    """Collective (get_state_dict gathers shards under FSDP); the main process writes `out_dir` atomically."""
    out_dir = Path(out_dir)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.generation_config = generation_config(tokenizer)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, is_main_process=True)
        tokenizer.model_max_length = getattr(unwrapped.config, "max_position_embeddings", seq_len)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out_dir
