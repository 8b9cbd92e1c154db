"""Runs a language-model GGUF file written by `llava export-gguf` in llama.cpp (llama-cpp-python)
and compares it with transformers' outputs stored in a parity fixture (fixtures/hf-parity/gemma,
gemma2, gemma3-text: Gemma, Gemma 2 and Gemma 3 causal LMs in f32, eager attention).

Usage: llama_cpp_check.py FILE FIXTURE_DIR [TEXT ...]

Feeds the fixture's prompt_ids, compares llama.cpp's logits at each prompt position with
transformers' (`logits` of the first row, which starts with the prompt), then decodes greedily as
many tokens as the fixture's `generated_ids` holds and compares the ids. Each TEXT is tokenized by
llama.cpp (with <bos>, special tokens parsed) and by the fixture's tokenizer.json (tokenizers).
Prints one JSON line.
"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer
import llama_cpp

path, fixture = sys.argv[1:3]
texts = sys.argv[3:]
inputs = load_file(f"{fixture}/inputs.safetensors")
expected = load_file(f"{fixture}/expected.safetensors")
prompt = [int(t) for t in inputs["prompt_ids"][0]]
reference = [int(t) for t in expected["generated_ids"][0]]
hf_logits = expected["logits"][0, : len(prompt)]

llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_threads=2, logits_all=True, verbose=False)
llm.reset()
llm.eval(prompt)
ours = np.array(llm.scores[: len(prompt)], dtype=np.float32)
logits_diff = float(np.abs(ours - hf_logits).max())
generated = list(prompt)
for _ in range(len(reference) - len(prompt)):
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    generated.append(token)
    llm.eval([token])

tok = Tokenizer.from_file(f"{fixture}/model/tokenizer.json")
tokenized = []
for text in texts:
    mine = llm.tokenize(text.encode(), add_bos=True, special=True)
    theirs = tok.encode(text).ids
    theirs = theirs if theirs[:1] == [2] else [2] + theirs
    tokenized.append({"text": text, "llama_cpp": mine, "tokenizers": theirs, "same": mine == theirs})

print(json.dumps({
    "logits_max_diff": logits_diff,
    "generated": generated,
    "reference": reference,
    "same_tokens": generated == reference,
    "tokenized": tokenized,
}))
