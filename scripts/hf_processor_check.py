"""Opens a model directory of ours with transformers' AutoProcessor and AutoModelForImageTextToText
(LLaVA, Gemma 3 or PaliGemma) and answers one question about one image greedily, as a user of
transformers would; prints the prompt, the prompt's and the new token ids and the answer, the last
line as JSON, for comparison with `llava generate` on the same directory.

    python scripts/hf_processor_check.py MODEL_DIR IMAGE "QUESTION" [MAX_NEW_TOKENS]

LLaVA and Gemma 3 go through the processor's chat template as their model cards show it
(`apply_chat_template(..., tokenize=True, return_dict=True)` with an image part and a text part);
PaliGemma, which has none, takes the question as its prefix (`processor(text=..., images=...)`).
"""

import json
import sys

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

model_dir, image, question = sys.argv[1], sys.argv[2], sys.argv[3]
max_new = int(sys.argv[4]) if len(sys.argv) > 4 else 16
processor = AutoProcessor.from_pretrained(model_dir)
family = AutoConfig.from_pretrained(model_dir).model_type
# Eager attention: transformers' default SDPA path drops Gemma 2's attention soft-cap.
model = AutoModelForImageTextToText.from_pretrained(
    model_dir, dtype=torch.float32, attn_implementation="eager").eval()
img = Image.open(image).convert("RGB")
if family == "paligemma":
    prompt = question
    inputs = processor(images=img, text=prompt, return_tensors="pt")
else:
    messages = [{"role": "user", "content": [{"type": "image", "image": img},
                                             {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
print("prompt", repr(prompt))
out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
new = out[0, inputs["input_ids"].shape[1]:]
answer = processor.decode(new, skip_special_tokens=True)
print("answer", repr(answer))
print(json.dumps({
    "family": family,
    "prompt_ids": inputs["input_ids"][0].tolist(),
    "ids": new.tolist(),
    "answer": answer,
    "processor": type(processor).__name__,
}))
