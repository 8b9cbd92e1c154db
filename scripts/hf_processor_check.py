"""Opens a model directory of ours with transformers' AutoProcessor and AutoModelForImageTextToText
(LLaVA, Gemma 3 or PaliGemma) and answers one question about its images greedily, as a user of
transformers would; prints the prompt, the prompt's and the new token ids, the answer and the
pixel values' shape, the last line as JSON, for comparison with `llava generate` on the same
directory.

    python scripts/hf_processor_check.py MODEL_DIR IMAGE[,IMAGE...] "QUESTION" [MAX_NEW_TOKENS] [pan-and-scan]

Several images (comma-separated) are shown in order before the question; `pan-and-scan` turns on
Gemma 3's crops (`do_pan_and_scan=True`, transformers' other defaults), and the JSON then holds the
pixel values themselves too.

LLaVA and Gemma 3 go through the processor's chat template as their model cards show it
(`apply_chat_template(..., tokenize=True, return_dict=True)` with an image part and a text part);
PaliGemma, which has none, takes the question as its prefix (`processor(text=..., images=...)`).
"""

import json
import sys

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

model_dir, images, question = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
max_new = int(sys.argv[4]) if len(sys.argv) > 4 else 16
pan_and_scan = len(sys.argv) > 5 and sys.argv[5] == "pan-and-scan"
processor_kwargs = {"do_pan_and_scan": True} if pan_and_scan else {}
processor = AutoProcessor.from_pretrained(model_dir)
family = AutoConfig.from_pretrained(model_dir).model_type
# Eager attention: transformers' default SDPA path drops Gemma 2's attention soft-cap.
model = AutoModelForImageTextToText.from_pretrained(
    model_dir, dtype=torch.float32, attn_implementation="eager").eval()
imgs = [Image.open(image).convert("RGB") for image in images]
if family == "paligemma":
    prompt = question
    inputs = processor(images=[imgs], text=[prompt], return_tensors="pt")
else:
    content = [{"type": "image", "image": img} for img in imgs]
    messages = [{"role": "user", "content": content + [{"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt",
                                           processor_kwargs=processor_kwargs)
print("prompt", repr(prompt))
out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
new = out[0, inputs["input_ids"].shape[1]:]
answer = processor.decode(new, skip_special_tokens=True)
print("answer", repr(answer))
report = {
    "family": family,
    "prompt_ids": inputs["input_ids"][0].tolist(),
    "ids": new.tolist(),
    "answer": answer,
    "processor": type(processor).__name__,
    "image_processor": type(processor.image_processor).__name__,
    "pixel_values_shape": list(inputs["pixel_values"].shape),
}
if pan_and_scan:
    report["pixel_values"] = inputs["pixel_values"].flatten().tolist()
print(json.dumps(report))
