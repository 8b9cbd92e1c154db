"""Opens a model directory of ours with transformers' AutoProcessor and answers one question about
one image greedily, as a user of transformers would; prints the prompt, the new token ids and the
answer, for comparison with `llava generate` on the same directory.

    python scripts/hf_processor_check.py MODEL_DIR IMAGE "QUESTION" [MAX_NEW_TOKENS]
"""

import sys

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

model_dir, image, question = sys.argv[1], sys.argv[2], sys.argv[3]
max_new = int(sys.argv[4]) if len(sys.argv) > 4 else 16
processor = AutoProcessor.from_pretrained(model_dir)
# Eager attention: transformers' default SDPA path drops Gemma 2's attention soft-cap.
model = LlavaForConditionalGeneration.from_pretrained(
    model_dir, dtype=torch.float32, attn_implementation="eager").eval()
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
print("prompt", repr(prompt))
inputs = processor(images=Image.open(image), text=prompt, return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
new = out[0, inputs["input_ids"].shape[1]:]
print("ids", new.tolist())
print("answer", repr(processor.decode(new, skip_special_tokens=True)))
