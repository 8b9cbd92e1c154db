"""Checks a language-model GGUF file written by `llava export-gguf` against the model directory it
came from, reading both with the reference tools: ggml-org's `gguf` package for the file,
safetensors and tokenizers for the Hugging Face directory.

Usage: gguf_lm_check.py FILE MODEL_DIR

Gemma 1, 2 and 3 (architectures gemma, gemma2, gemma3). Every tensor must equal the checkpoint's
(norms as 1 + w), within the quantization's error for a quantized file; where llama.cpp's query
scale (1/sqrt(head_dim)) differs from the config's (1/sqrt(query_pre_attn_scalar)), the queries
carry the ratio (Gemma 2's q_proj, Gemma 3's q_norm). The vocabulary must be the tokenizer's, id
by id; the keys must be config.json's (for Gemma 2/3 also the window, which layers slide, the
soft-caps and the rotary embeddings).
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


model_type = text.get("model_type", "gemma")
arch = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}[model_type]
if field("general.architecture") != arch:
    problems.append(f"architecture {field('general.architecture')} != {arch}")
layers = text["num_hidden_layers"]
wanted = [
    ("embedding_length", text["hidden_size"]),
    ("block_count", layers),
    ("feed_forward_length", text["intermediate_size"]),
    ("attention.head_count", text["num_attention_heads"]),
    ("attention.head_count_kv", text["num_key_value_heads"]),
    ("attention.key_length", text["head_dim"]),
    ("context_length", text["max_position_embeddings"]),
]
q_factor = 1.0
if arch != "gemma":
    types = text["layer_types"]
    wanted += [
        ("attention.sliding_window", text["sliding_window"]),
        ("attention.sliding_window_pattern", [t == "sliding_attention" for t in types]),
    ]
    if arch == "gemma2":
        wanted += [
            ("attn_logit_softcapping", text["attn_logit_softcapping"]),
            ("final_logit_softcapping", text["final_logit_softcapping"]),
        ]
        wanted += [("rope.freq_base_swa", text["rope_parameters"]["rope_theta"])]
    else:
        rope = text["rope_parameters"]
        wanted += [
            ("rope.freq_base", rope["full_attention"]["rope_theta"]),
            ("rope.freq_base_swa", rope["sliding_attention"]["rope_theta"]),
        ]
        if rope["full_attention"].get("rope_type") == "linear":
            wanted += [
                ("rope.scaling.type", "linear"),
                ("rope.scaling.factor", rope["full_attention"]["factor"]),
            ]
    big = layers == {"gemma2": 46, "gemma3": 62}[arch]
    per_head = text["hidden_size"] // text["num_attention_heads"] if big else text["head_dim"]
    q_factor = (per_head / text.get("query_pre_attn_scalar", 256)) ** 0.5
for key, want in wanted:
    got = field(f"{arch}.{key}")
    same = got == want if not isinstance(want, float) else got is not None and abs(got - want) < 1e-6 * abs(want)
    if not same:
        problems.append(f"{arch}.{key}: {got} != {want}")

names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}
if arch != "gemma":
    names.update({"post_attention_norm": "post_attention_layernorm",
                  "ffn_norm": "pre_feedforward_layernorm",
                  "post_ffw_norm": "post_feedforward_layernorm"})
if arch == "gemma3":
    names.update({"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"})
scaled = "attn_q_norm" if arch == "gemma3" else "attn_q"
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
    if t.name.split(".")[2:3] == [scaled]:
        want = want * q_factor
    got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(want.shape)
    if norm and t.tensor_type != gguf.GGMLQuantizationType.F32:
        problems.append(f"{t.name}: a norm stored as {t.tensor_type.name}")
    tolerance = {"F32": 0.0, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 1e-2, "Q4_0": 0.15}[t.tensor_type.name]
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    worst = max(worst, err)
    if err > tolerance:
        problems.append(f"{t.name}: off by {err:.3g} of its largest value")
expected = 2 + len(names) * layers
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
