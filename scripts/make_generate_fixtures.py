# Reference generations for batched, left-padded prompts that run past the sliding window, made with
# transformers' eager attention (its default SDPA path drops Gemma 2's attention soft-cap) from the
# parity fixtures' models. Writes fixtures/hf-generate/<name>.safetensors: input_ids and
# attention_mask (left padding, pad id 0) and generated_ids (prompt included, greedy, 12 new tokens,
# no early stop) and logits (each step's raw logits, [batch, steps, vocab]). Run with the cached torch environment's python after
# `pip install transformers==5.17.*`: python scripts/make_generate_fixtures.py
import os, sys, torch, transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
out_dir = os.path.join(root, "hf-generate")
os.makedirs(out_dir, exist_ok=True)
prompts = [[2, 17, 300, 5, 44, 99, 123, 7, 600], [2, 8, 31, 250]]
for name in ["gemma2", "gemma3-text"]:
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(root, "hf-parity", name, "model"), attn_implementation="eager",
        dtype=torch.float32)
    model.eval()
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12,
                             min_new_tokens=12, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(out.logits, 1)  # [batch, steps, vocab]: each step's raw logits
    save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
               "generated_ids": out.sequences.contiguous(), "logits": logits.contiguous()},
              os.path.join(out_dir, f"{name}.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__,
                        "attn_implementation": "eager", "model": f"hf-parity/{name}/model"})
    print(name, out.sequences.tolist())
