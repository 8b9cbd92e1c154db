"""Checks a language-model GGUF file written by `llava export-gguf` against the model directory it
came from, reading both with the reference tools: ggml-org's `gguf` package for the file,
safetensors and tokenizers for the Hugging Face directory.

Usage: gguf_lm_check.py FILE MODEL_DIR

Every tensor must equal the checkpoint's (norms as 1 + w), within the quantization's error for a
quantized file; the vocabulary must be the tokenizer's, id by id; the keys must be config.json's.
Prints one JSON line; exits 1 on a mismatch.
"""
import glob
import json
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

path, model_dir = sys.argv[1:3]
reader = gguf.GGUFReader(path)
config = json.load(open(f"{model_dir}/config.json"))
text = config.get("text_config", config)
weights = {}
for f in glob.glob(f"{model_dir}/*.safetensors"):
    weights.update(load_file(f))
prefix = min((k[: -len("embed_tokens.weight")] for k in weights if k.endswith("embed_tokens.weight")), key=len)
problems = []


def field(key):
    f = reader.get_field(key)
    return None if f is None else f.contents()


for key, want in [
    ("gemma.embedding_length", text["hidden_size"]),
    ("gemma.block_count", text["num_hidden_layers"]),
    ("gemma.feed_forward_length", text["intermediate_size"]),
    ("gemma.attention.head_count", text["num_attention_heads"]),
    ("gemma.attention.head_count_kv", text["num_key_value_heads"]),
    ("gemma.attention.key_length", text["head_dim"]),
    ("gemma.context_length", text["max_position_embeddings"]),
]:
    if field(key) != want:
        problems.append(f"{key}: {field(key)} != {want}")

names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}
worst = 0.0
for t in reader.tensors:
    if t.name == "token_embd.weight":
        hf, norm = "embed_tokens.weight", False
    elif t.name == "output_norm.weight":
        hf, norm = "norm.weight", True
    else:
        _, i, short, _ = t.name.split(".")
        hf, norm = f"layers.{i}.{names[short]}.weight", short.endswith("norm")
    want = weights[prefix + hf].astype(np.float32) + (1.0 if norm else 0.0)
    got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(want.shape)
    if norm and t.tensor_type != gguf.GGMLQuantizationType.F32:
        problems.append(f"{t.name}: a norm stored as {t.tensor_type.name}")
    tolerance = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 1e-2, "Q4_0": 0.15}[t.tensor_type.name]
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    worst = max(worst, err)
    if err > tolerance:
        problems.append(f"{t.name}: off by {err:.3g} of its largest value")
expected = 2 + 9 * text["num_hidden_layers"]
if len(reader.tensors) != expected:
    problems.append(f"{len(reader.tensors)} tensors, expected {expected}")

tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tokens = field("tokenizer.ggml.tokens")
for i, piece in enumerate(tokens):
    ref = tok.id_to_token(i)
    if ref is not None and ref != piece:
        problems.append(f"token {i}: {piece!r} != {ref!r}")
        break
if len(tokens) != text["vocab_size"]:
    problems.append(f"{len(tokens)} tokens, vocab_size {text['vocab_size']}")

print(json.dumps({"tensors": len(reader.tensors), "worst_relative_error": worst, "problems": problems}))
sys.exit(1 if problems else 0)
