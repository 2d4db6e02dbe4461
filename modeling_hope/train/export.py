"""The final model as a Hub-ready folder: safetensors, config.json (with `auto_map` and the remote-code files for
HOPE), generation_config.json, the tokenizer and a model card; loadable with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` or
`pipeline("text-generation", folder, trust_remote_code=True)`. `hope convert checkpoint` writes the same folder
from a checkpoint."""

from pathlib import Path

from transformers import GenerationConfig


def generation_config(tokenizer) -> GenerationConfig:
    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.8, top_k=50,
                            max_new_tokens=256)


def export_model(accelerator, model, tokenizer, out_dir, seq_len: int) -> Path:
    """Collective (get_state_dict gathers shards under FSDP); the main process writes `out_dir` atomically."""
    from ..convert.card import training_card
    from ..convert.hub import save_hub_folder

    out_dir = Path(out_dir)
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        card = training_card(unwrapped, out_dir.parent)
        save_hub_folder(unwrapped, out_dir, tokenizer=tokenizer, state_dict=state_dict,
                        generation_config=generation_config(tokenizer), card=card, max_length=seq_len, replace=True)
    accelerator.wait_for_everyone()
    return out_dir
