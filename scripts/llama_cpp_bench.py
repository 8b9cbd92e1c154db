"""llama.cpp's side of `cargo xtask bench-cpu`: one GGUF file loaded (read into memory at load,
not mapped), one prompt of random ids (`<bos>` first; which ids does not change the cost), greedy
decoding. Prints one JSON object with `llava bench-text`'s fields.

Usage: llama_cpp_bench.py FILE WEIGHTS PROMPT_LEN NEW_TOKENS THREADS
"""
import json
import sys
import time

import numpy as np
import llama_cpp

path, weights = sys.argv[1:3]
prompt_len, new_tokens, threads = (int(a) for a in sys.argv[3:6])


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024.0
    return None


start = time.perf_counter()
llm = llama_cpp.Llama(model_path=path, n_ctx=prompt_len + new_tokens + 8, n_batch=512,
                      n_ubatch=512, n_threads=threads, n_threads_batch=threads, use_mmap=False,
                      verbose=False)
load_s = time.perf_counter() - start
rss, peak = status("VmRSS:"), status("VmHWM:")
rng = np.random.default_rng(0)
prompt = [2] + [int(t) for t in rng.integers(3, 640, size=prompt_len - 1)]
vocab = llama_cpp.llama_model_get_vocab(llm.model)
n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

start = time.perf_counter()
llm.eval(prompt)
token = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))
prefill = time.perf_counter() - start
for _ in range(new_tokens - 1):
    llm.eval([token])
    token = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))
total = time.perf_counter() - start
print(json.dumps({
    "engine": "llama.cpp",
    "weights": weights,
    "prompt_len": prompt_len,
    "new_tokens": new_tokens,
    "load_s": load_s,
    "rss_mib": rss,
    "peak_rss_mib": peak,
    "prefill_tokens_per_s": prompt_len / prefill,
    "decode_tokens_per_s": (new_tokens - 1) / (total - prefill),
}))
