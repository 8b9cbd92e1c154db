"""Makes fixtures/explain/NAME: relevancy and raw attention maps of a parity fixture's greedy
answer, computed with transformers (eager attention, `output_attentions=True`, autograd) and a
plain Python implementation of the rule `llava explain` implements (Chefer et al. 2021 as
LVLM-Interpret applies it):

  for each answer token t, predicted at position p:
    grads = d logits[p, t] / d A for every language-model layer's attention A [heads, q, k]
    Abar  = mean over heads of clamp(grads * A, min=0)
    R = I; R = R + Abar @ R for each layer in forward order; relevancy = R[p]
  attention = A[:, :, p, :] for every layer (per head)

    python scripts/make_explain_fixture.py fixtures/hf-parity/llava-clip fixtures/explain/llava-clip

The answer is the parity fixture's `generated_ids` after its first `prompt_ids` row, about the
first image of `pixel_values`.
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

src, out = sys.argv[1], sys.argv[2]
meta = json.load(open(os.path.join(src, "meta.json")))
inputs = load_file(os.path.join(src, meta["inputs"]))
expected = load_file(os.path.join(src, meta["expected"]))
model = AutoModelForImageTextToText.from_pretrained(
    os.path.join(src, meta["model_dir"]), dtype=torch.float32, attn_implementation="eager").eval()

prompt = inputs["prompt_ids"][:1]
pixels = inputs.get("prompt_pixel_values", inputs["pixel_values"])[:1]
answer = expected["generated_ids"][0, prompt.shape[1]:]
sequence = torch.cat([prompt[0], answer[:-1]]).unsqueeze(0)
n, length = answer.shape[0], sequence.shape[1]

# The bidirectional blocks as the processor's token_type_ids give them: Gemma 3's image tokens
# (1), PaliGemma's prompt as the prefix (0) and the answer as the suffix (1).
family = model.config.model_type
extra = {}
if family == "gemma3":
    extra["token_type_ids"] = (sequence == meta["image_token_id"]).long()
elif family == "paligemma":
    extra["token_type_ids"] = (torch.arange(length) >= prompt.shape[1]).long().unsqueeze(0)
outputs = model(input_ids=sequence, pixel_values=pixels, output_attentions=True, **extra)
attentions = list(outputs.attentions)  # the language model's, [1, heads, len, len] per layer
first = prompt.shape[1] - 1
relevancy, attention = [], []
for i in range(n):
    p = first + i
    target = outputs.logits[0, p, answer[i]]
    grads = torch.autograd.grad(target, attentions, retain_graph=True)
    R = torch.eye(length, dtype=torch.float64)
    for a, g in zip(attentions, grads):
        abar = (g * a).clamp(min=0).mean(dim=1)[0].double()
        R = R + abar @ R
    relevancy.append(R[p].float())
    attention.append(torch.stack([a[0, :, p, :].detach() for a in attentions]))

os.makedirs(out, exist_ok=True)
save_file({"sequence": sequence.contiguous(), "answer": answer.unsqueeze(0).contiguous(),
           "pixel_values": pixels.contiguous(), "prompt_ids": prompt.contiguous()},
          os.path.join(out, "inputs.safetensors"))
save_file({"relevancy": torch.stack(relevancy).contiguous(),
           "attention": torch.stack(attention).contiguous()},
          os.path.join(out, "expected.safetensors"))
json.dump({
    "description": "relevancy [answer, len] and attention [answer, layers, heads, len] of the "
                   "greedy answer of " + os.path.basename(os.path.normpath(src)) +
                   ", by scripts/make_explain_fixture.py (transformers eager attention, autograd, "
                   "the rule in float64)",
    "model": os.path.join("../../hf-parity", os.path.basename(os.path.normpath(src)), "model"),
    "image_token_id": meta["image_token_id"],
    "atol": 1e-4,
    "made_with": {"torch": torch.__version__, "transformers": transformers.__version__},
}, open(os.path.join(out, "meta.json"), "w"), indent=1)
print("answer", answer.tolist(), "relevancy", torch.stack(relevancy).shape)
