"""Runs `llava export-gguf`'s language-model and mmproj files in llama.cpp (llama-cpp-python's
multimodal library, mtmd) on one image and compares with transformers' outputs stored by
scripts/make_gguf_vlm_fixture.py.

Usage: llama_cpp_vlm_check.py LM_GGUF MMPROJ_GGUF IMAGE EXPECTED_SAFETENSORS QUESTION

Builds the prompt as `llava generate` does (`<bos><start_of_turn>user\\n<image>\\nQUESTION...`)
with mtmd's media marker in the image's place, checks that llama.cpp's tokens around the image
are the fixture's `input_ids`, encodes the image alone and compares llama.cpp's image embeddings
with the fixture's `image_features` (what the projector hands the language model; llama.cpp's
embeddings times sqrt(hidden), which its Gemma graph multiplies them by), then evaluates
the prompt and decodes greedily as many tokens as the fixture's `generated` holds; then asks the
same through llama-cpp-python's chat API (`create_chat_completion` with MTMDChatHandler, which
renders the file's chat template). Prints one JSON line.

A Gemma 3 pair (the mmproj's `clip.projector_type` is `gemma3`) is asked as Gemma 3's processor
writes prompts (`\n\n` + the image between `<start_of_image>` and `<end_of_image>` + `\n\n`,
which mtmd adds around the marker). Image embeddings are compared unscaled where the language
model's file is a `gemma3` one (llama.cpp's gemma3 scales token embeddings only, as transformers
does). Where the fixture holds them, the logits after the prompt are compared with transformers'
`prompt_logits`.
"""
import ctypes
import json
import sys

import gguf
import numpy as np
from PIL import Image
from safetensors.numpy import load_file
import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

lm_path, mmproj_path, image_path, expected_path, question = sys.argv[1:6]
expected = load_file(expected_path)
reference = [int(t) for t in expected["generated"][0]]
features = expected["image_features"]
ids = [int(t) for t in expected["input_ids"][0]]
gemma3 = gguf.GGUFReader(mmproj_path).get_field("clip.projector_type").contents() == "gemma3"

llm = llama_cpp.Llama(model_path=lm_path, n_ctx=256, n_batch=256, n_threads=2, verbose=False)
params = mtmd.mtmd_context_params_default()
params.use_gpu = False
params.n_threads = 2
params.print_timings = False
params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
ctx = mtmd.mtmd_init_from_file(mmproj_path.encode(), llm.model, params)
assert ctx, "mtmd could not load the mmproj file"

image = Image.open(image_path).convert("RGB")
rgb = image.tobytes()
bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb))
marker = mtmd.mtmd_default_marker().decode()
image_text = f"\n\n{marker}\n\n" if gemma3 else f"{marker}\n"
prompt = f"<bos><start_of_turn>user\n{image_text}{question}<end_of_turn>\n<start_of_turn>model\n".encode()
text = mtmd.mtmd_input_text()
text.text = prompt
text.text_len = len(prompt)
text.add_special = False
text.parse_special = True
chunks = mtmd.mtmd_input_chunks_init()
assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0

# The prompt as llama.cpp splits it: text tokens and the image's place.
tokens = []
image_chunk = None
for i in range(mtmd.mtmd_input_chunks_size(chunks)):
    chunk = mtmd.mtmd_input_chunks_get(chunks, i)
    n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
    if mtmd.mtmd_input_chunk_get_type(chunk) == 0:
        count = ctypes.c_size_t()
        ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
        tokens += [int(ptr[j]) for j in range(count.value)]
    else:
        image_chunk = chunk
        tokens += [None] * n
image_id = next(t for t, e in zip(ids, tokens) if e is None)
prompt_same = [image_id if t is None else t for t in tokens] == ids

assert mtmd.mtmd_encode_chunk(ctx, image_chunk) == 0
n_image = mtmd.mtmd_input_chunk_get_n_tokens(image_chunk)
width = llama_cpp.llama_model_n_embd(llm.model)
embd = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n_image * width,)).reshape(n_image, width).copy()
# The exporter stores the projector's last layer divided by sqrt(width): llama.cpp's Gemma scales
# every input embedding by sqrt(width), transformers 5 leaves image features unscaled.
# llama.cpp's gemma and gemma2 graphs scale every input embedding by sqrt(width); gemma3 only
# token embeddings.
if gguf.GGUFReader(lm_path).get_field("general.architecture").contents() != "gemma3":
    embd *= np.float32(np.sqrt(width))
features_diff = float(np.abs(embd - features).max()) if embd.shape == features.shape else None
scale = float(np.abs(features).max())

n_past = llama_cpp.llama_pos(0)
assert mtmd.mtmd_helper_eval_chunks(ctx, llm.ctx, chunks, 0, 0, 256, True, ctypes.byref(n_past)) == 0
vocab = llama_cpp.llama_model_get_vocab(llm.model)
n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
logits_diff = None
if "prompt_logits" in expected:
    last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
    logits_diff = float(np.abs(last - expected["prompt_logits"][0]).max())
generated = []
for _ in range(len(reference)):
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
    token = int(np.argmax(logits))
    generated.append(token)
    assert llama_cpp.llama_decode(llm.ctx, llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(token), 1)) == 0
mtmd.mtmd_input_chunks_free(chunks)
mtmd.mtmd_bitmap_free(bitmap)
mtmd.mtmd_free(ctx)

# The same question through llama-cpp-python's chat API: MTMDChatHandler renders the file's
# tokenizer.chat_template with the image as a content part.
from llama_cpp.llama_chat_format import MTMDChatHandler
import base64
handler = MTMDChatHandler(clip_model_path=mmproj_path, verbose=False)
chat = llama_cpp.Llama(model_path=lm_path, chat_handler=handler, n_ctx=256, n_threads=2, verbose=False)
url = "data:image/png;base64," + base64.b64encode(open(image_path, "rb").read()).decode()
answer = chat.create_chat_completion(
    messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": question}]}],
    temperature=0.0, max_tokens=len(reference))["choices"][0]["message"]["content"]

print(json.dumps({
    "prompt_same": prompt_same,
    "image_tokens": n_image,
    "features_shape": list(embd.shape),
    "features_max_diff": features_diff,
    "features_max_abs": scale,
    "generated": generated,
    "reference": reference,
    "same_tokens": generated == reference,
    "prompt_logits_max_diff": logits_diff,
    "chat_answer": answer,
}))
