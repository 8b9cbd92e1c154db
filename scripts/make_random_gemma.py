"""Writes a random-weight Gemma with Gemma-2B's exact shapes (transformers' initialisation, seed 0,
bf16, tied head) for `cargo xtask bench-cpu`, with the tiny fixture tokenizer (the GGUF export pads
the vocabulary to the model's 256000 rows).

Usage: make_random_gemma.py OUT_DIR
"""
import os
import shutil
import sys
import time

import torch
import transformers

out = sys.argv[1]
start = time.time()
config = transformers.GemmaConfig(
    vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
    num_attention_heads=8, num_key_value_heads=1, head_dim=256, max_position_embeddings=8192,
    tie_word_embeddings=True)
torch.manual_seed(0)
model = transformers.GemmaForCausalLM(config).to(torch.bfloat16)
partial = out + ".partial"
shutil.rmtree(partial, ignore_errors=True)
model.save_pretrained(partial)
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
shutil.copy(os.path.join(root, "fixtures/hf-parity/gemma/model/tokenizer.json"), partial)
os.replace(partial, out)
print(f"made {out} in {time.time() - start:.0f}s", file=sys.stderr)
