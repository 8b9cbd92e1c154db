"""Makes fixtures/gguf-vlm: what transformers answers about one image with two tiny LLaVA-Gemma
models, for the test that runs `llava export-gguf`'s language-model and mmproj files in llama.cpp.

Run with the torch environment's python (transformers 5.17):
    python scripts/make_gguf_vlm_fixture.py

* `siglip/model`: a LlavaForConditionalGeneration with a SigLIP tower (no class token, feature
  layer -2, strategy `full`) and a Gemma 1 language model, composed by transformers from the
  SigLIP tower of fixtures/hf-parity/llava-siglip and the language model, projector and tokenizer
  of fixtures/hf-parity/llava-clip. llama.cpp's `llava` graph runs such a tower as transformers
  does, so its greedy answer should be transformers' token for token.
* `siglip-gemma3/model`: the same tower and projector before the Gemma 3 language model of
  fixtures/hf-parity/gemma3-text (LLaVA with a Gemma 3: image features inserted unscaled, as
  Gemma 3 scales token embeddings only); its greedy answer repeats one token, so
  `prompt_logits` (after the prompt) is kept too.
* `clip`: fixtures/hf-parity/llava-clip itself (CLIP, class token, strategy `default`). llama.cpp
  0c1e57098 (llama-cpp-python 0.3.36) appends the class token after the patches while giving
  positions as if it came first, and then keeps encoder rows 1..n (ggml-org/llama.cpp#25814): the
  image features it sends are not transformers'. The fixture holds both: transformers' answer, and
  transformers run the way llama.cpp runs (position ids [n, 0, .., n-1] for [CLS, p0, .., p(n-1)],
  rows [p1, .., p(n-1), CLS] kept), with the greedy answer from those features.

* `gemma3/model`: fixtures/hf-parity/gemma3 (a Gemma3ForConditionalGeneration: SigLIP tower,
  pooling projector to 4 tokens, Gemma 3 language model with sliding layers) given a tokenizer:
  the Gemma fixture's, with `<start_of_image>` (640) and `<end_of_image>` (641) added as special
  tokens as Gemma 3's own are, the embedding grown to 642 rows (seeded) and `<image>` (639) as the
  image token. Its prompt is the one Gemma 3's processor writes (`\n\n<start_of_image>` + image
  tokens + `<end_of_image>\n\n`), its answer transformers' with eager attention and the image's
  tokens attending to each other both ways (`token_type_ids`); `prompt_logits` holds the logits
  after the prompt (this random model's greedy answer repeats one token, so the logits are what
  shows the image's path through the language model).

`image.png` is a 28x28 RGB image (the towers' own size, so no resize happens anywhere). Each
`expected.safetensors` holds `input_ids` (the prompt as `llava generate` writes it, one `<image>`
per image token), `image_features` (what the projector gives the language model; for CLIP the
llama.cpp-ordered ones), `generated` (greedy continuation) and, for CLIP, `generated_hf`.
"""
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import (CLIPImageProcessor, Gemma3ForConditionalGeneration,
                          Gemma3ImageProcessor, LlavaConfig, LlavaForConditionalGeneration,
                          SiglipImageProcessor)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures/gguf-vlm")
CLIP = os.path.join(ROOT, "fixtures/hf-parity/llava-clip/model")
SIGLIP = os.path.join(ROOT, "fixtures/hf-parity/llava-siglip/model")
QUESTION = "What is in the image?"
NEW_TOKENS = 8

torch.manual_seed(0)
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(7)
# Smooth blocks rather than noise, so the picture has structure the tower can see.
pixels = np.kron(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8), np.ones((7, 7, 1), dtype=np.uint8))
pixels = (pixels.astype(np.int32) + rng.integers(-20, 21, size=pixels.shape)).clip(0, 255).astype(np.uint8)
image = Image.fromarray(pixels, "RGB")
image.save(os.path.join(OUT, "image.png"))


def prompt_ids(tokenizer, image_token, count):
    text = f"<bos><start_of_turn>user\n{image_token}\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    image_id = tokenizer.convert_tokens_to_ids(image_token)
    at = ids.index(image_id)
    return ids[:at] + [image_id] * count + ids[at + 1:]


def greedy(model, embeds, steps):
    """Greedy continuation of `embeds` [1, T, H] by the language model (no cache: tiny)."""
    lm = model.model.language_model
    embed = lm.get_input_embeddings()
    out = []
    gaps = []
    for _ in range(steps):
        hidden = lm(inputs_embeds=embeds).last_hidden_state
        logits = model.lm_head(hidden[:, -1])[0]
        top = torch.topk(logits, 2).values
        gaps.append(float(top[0] - top[1]))
        token = int(logits.argmax())
        out.append(token)
        embeds = torch.cat([embeds, embed(torch.tensor([[token]]))], dim=1)
    return out, min(gaps)


def rows(features):
    """`get_image_features`' output (an output object, a list per image or a tensor) as one
    [tokens, hidden] tensor."""
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    if isinstance(features, (list, tuple)):
        return torch.cat(list(features), 0)
    return features.reshape(-1, features.shape[-1])


def splice(model, ids, features):
    embeds = model.model.language_model.get_input_embeddings()(torch.tensor([ids]))
    mask = torch.tensor(ids) == model.config.image_token_id
    embeds[0, mask] = features
    return embeds


# --- SigLIP tower + Gemma 1: composed by transformers -------------------------------------------
clip_config = json.load(open(os.path.join(CLIP, "config.json")))
siglip_config = json.load(open(os.path.join(SIGLIP, "config.json")))


def siglip_llava_config(text_config):
    """LLaVA with the SigLIP fixture's tower (feature layer -2, every patch kept) before
    `text_config`'s language model."""
    return LlavaConfig(
        vision_config=siglip_config["vision_config"],
        text_config=text_config,
        image_token_index=clip_config["image_token_index"],
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )


config = siglip_llava_config(clip_config["text_config"])
composed = LlavaForConditionalGeneration(config).eval()
clip_model = LlavaForConditionalGeneration.from_pretrained(CLIP, dtype=torch.float32).eval()
siglip_model = LlavaForConditionalGeneration.from_pretrained(SIGLIP, dtype=torch.float32).eval()
state = {}
for name, value in clip_model.state_dict().items():
    if "vision_tower" not in name:
        state[name] = value
for name, value in siglip_model.state_dict().items():
    if "vision_tower" in name:
        state[name] = value
composed.load_state_dict(state, strict=True)
siglip_dir = os.path.join(OUT, "siglip/model")
shutil.rmtree(os.path.join(OUT, "siglip"), ignore_errors=True)
composed.save_pretrained(siglip_dir)
shutil.copy(os.path.join(CLIP, "tokenizer.json"), siglip_dir)
for extra in ["generation_config.json"]:
    if os.path.exists(os.path.join(CLIP, extra)):
        shutil.copy(os.path.join(CLIP, extra), siglip_dir)

# --- SigLIP tower + Gemma 3 language model: LLaVA's projector before a Gemma 3 ----------------
GEMMA3_TEXT = os.path.join(ROOT, "fixtures/hf-parity/gemma3-text/model")
from transformers import Gemma3ForCausalLM
gemma3_text = Gemma3ForCausalLM.from_pretrained(GEMMA3_TEXT, dtype=torch.float32).eval()
config3 = siglip_llava_config(json.load(open(os.path.join(GEMMA3_TEXT, "config.json"))))
composed3 = LlavaForConditionalGeneration(config3).eval()
state3 = {name: value for name, value in state.items() if "language_model" not in name
          and name != "lm_head.weight"}
for name, value in gemma3_text.state_dict().items():
    state3[name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name] = value
composed3.load_state_dict(state3, strict=True)
siglip_gemma3_dir = os.path.join(OUT, "siglip-gemma3/model")
shutil.rmtree(os.path.join(OUT, "siglip-gemma3"), ignore_errors=True)
composed3.save_pretrained(siglip_gemma3_dir)
shutil.copy(os.path.join(CLIP, "tokenizer.json"), siglip_gemma3_dir)



class Tok:
    """tokenizers' Tokenizer with the two calls used above."""

    def __init__(self, path):
        self.t = Tokenizer.from_file(path)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.t.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_tokens_to_ids(self, token):
        return self.t.token_to_id(token)


tok = Tok(os.path.join(CLIP, "tokenizer.json"))
image_token = "<image>"
assert tok.convert_tokens_to_ids(image_token) == config.image_token_id, "tokenizer's <image> id"

report = {}
with torch.no_grad():
    processor = SiglipImageProcessor(size={"height": 28, "width": 28}, resample=3,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pv = processor(images=image, return_tensors="pt")["pixel_values"]
    features = rows(composed.get_image_features(pixel_values=pv))
    ids = prompt_ids(tok, image_token, features.shape[0])
    generated, gap = greedy(composed, splice(composed, ids, features), NEW_TOKENS)
    # transformers' own generate agrees with the loop above.
    hf = composed.generate(input_ids=torch.tensor([ids]), pixel_values=pv, max_new_tokens=NEW_TOKENS,
                           do_sample=False)[0, len(ids):].tolist()
    assert hf == generated, (hf, generated)
    save_file({
        "input_ids": torch.tensor([ids], dtype=torch.int64),
        "pixel_values": pv.contiguous(),
        "image_features": features.contiguous(),
        "generated": torch.tensor([generated], dtype=torch.int64),
    }, os.path.join(OUT, "siglip/expected.safetensors"))
    report["siglip"] = {"generated": generated, "smallest_top2_gap": gap}

    # The same image and question through the Gemma 3 variant (image features go in unscaled,
    # the language model scaling token embeddings only).
    features = rows(composed3.get_image_features(pixel_values=pv))
    generated, gap = greedy(composed3, splice(composed3, ids, features), NEW_TOKENS)
    hf = composed3.generate(input_ids=torch.tensor([ids]), pixel_values=pv, max_new_tokens=NEW_TOKENS,
                            do_sample=False)[0, len(ids):].tolist()
    assert hf == generated, (hf, generated)
    lm = composed3.model.language_model
    prompt_logits = composed3.lm_head(lm(inputs_embeds=splice(composed3, ids, features)).last_hidden_state[:, -1])
    save_file({
        "input_ids": torch.tensor([ids], dtype=torch.int64),
        "pixel_values": pv.contiguous(),
        "image_features": features.contiguous(),
        "generated": torch.tensor([generated], dtype=torch.int64),
        "prompt_logits": prompt_logits.contiguous(),
    }, os.path.join(OUT, "siglip-gemma3/expected.safetensors"))
    report["siglip-gemma3"] = {"generated": generated, "smallest_top2_gap": gap}

    # --- CLIP: transformers, and transformers run as llama.cpp 0c1e57098 runs it -----------------
    processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                   resample=3)
    pv = processor(images=image, return_tensors="pt")["pixel_values"]
    features = rows(clip_model.get_image_features(pixel_values=pv, vision_feature_layer=-2,
                                                  vision_feature_select_strategy="default"))
    ids = prompt_ids(tok, image_token, features.shape[0])
    generated_hf = clip_model.generate(input_ids=torch.tensor([ids]), pixel_values=pv,
                                       max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids):].tolist()
    tower = clip_model.model.vision_tower
    embeddings = tower.vision_model.embeddings if hasattr(tower, "vision_model") else tower.embeddings
    n = features.shape[0]
    embeddings.position_ids = torch.tensor([[n] + list(range(n))])
    hidden = tower(pixel_values=pv, output_hidden_states=True).hidden_states[-2]
    kept = hidden[:, list(range(2, n + 1)) + [0]]
    llama_order = clip_model.model.multi_modal_projector(kept)[0]
    generated, gap = greedy(clip_model, splice(clip_model, ids, llama_order), NEW_TOKENS)
    os.makedirs(os.path.join(OUT, "clip"), exist_ok=True)
    save_file({
        "input_ids": torch.tensor([ids], dtype=torch.int64),
        "pixel_values": pv.contiguous(),
        "image_features": llama_order.contiguous(),
        "image_features_hf": features.contiguous(),
        "generated": torch.tensor([generated], dtype=torch.int64),
        "generated_hf": torch.tensor([generated_hf], dtype=torch.int64),
    }, os.path.join(OUT, "clip/expected.safetensors"))
    report["clip"] = {"generated_as_llama_cpp_runs": generated, "generated_hf": generated_hf,
                      "smallest_top2_gap": gap}

# --- Gemma 3: the parity fixture's model with image delimiters in its tokenizer ----------------
GEMMA3 = os.path.join(ROOT, "fixtures/hf-parity/gemma3/model")
gemma3_dir = os.path.join(OUT, "gemma3/model")
shutil.rmtree(os.path.join(OUT, "gemma3"), ignore_errors=True)
os.makedirs(gemma3_dir)
tokenizer = Tokenizer.from_file(os.path.join(CLIP, "tokenizer.json"))
from tokenizers import AddedToken
tokenizer.add_special_tokens([AddedToken("<start_of_image>", special=True, normalized=False),
                              AddedToken("<end_of_image>", special=True, normalized=False)])
boi, eoi = tokenizer.token_to_id("<start_of_image>"), tokenizer.token_to_id("<end_of_image>")
assert (boi, eoi) == (640, 641), (boi, eoi)
tokenizer.save(os.path.join(gemma3_dir, "tokenizer.json"))
gemma3 = Gemma3ForConditionalGeneration.from_pretrained(GEMMA3, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
torch.manual_seed(3)
gemma3.resize_token_embeddings(642, mean_resizing=False)
with torch.no_grad():
    table = gemma3.get_input_embeddings().weight
    table[640:] = torch.randn(2, table.shape[1]) * table[:640].std()
gemma3.config.boi_token_id = gemma3.config.boi_token_index = boi
gemma3.config.eoi_token_id = gemma3.config.eoi_token_index = eoi
gemma3.config.image_token_id = gemma3.config.image_token_index = tokenizer.token_to_id("<image>")
gemma3.save_pretrained(gemma3_dir)
processor = Gemma3ImageProcessor(size={"height": 28, "width": 28}, resample=2,
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
processor.save_pretrained(gemma3_dir)
with torch.no_grad():
    pv = processor(images=image, return_tensors="pt")["pixel_values"]
    features = rows(gemma3.get_image_features(pixel_values=pv))
    text = (f"<bos><start_of_turn>user\n\n\n<start_of_image>{'<image>' * features.shape[0]}"
            f"<end_of_image>\n\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n")
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    image_id = gemma3.config.image_token_id
    assert ids.count(image_id) == features.shape[0]
    generated, gaps = [], []
    for _ in range(NEW_TOKENS):
        input_ids = torch.tensor([ids + generated])
        token_type_ids = (input_ids == image_id).long()
        logits = gemma3(input_ids=input_ids, pixel_values=pv,
                        token_type_ids=token_type_ids).logits[0, -1]
        if not generated:
            prompt_logits = logits.clone()
        top = torch.topk(logits, 2).values
        gaps.append(float(top[0] - top[1]))
        generated.append(int(logits.argmax()))
    hf = gemma3.generate(input_ids=torch.tensor([ids]), pixel_values=pv,
                         token_type_ids=(torch.tensor([ids]) == image_id).long(),
                         max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(ids):].tolist()
    assert hf == generated, (hf, generated)
    save_file({
        "input_ids": torch.tensor([ids], dtype=torch.int64),
        "pixel_values": pv.contiguous(),
        "image_features": features.contiguous(),
        "generated": torch.tensor([generated], dtype=torch.int64),
        "prompt_logits": prompt_logits[None].contiguous(),
    }, os.path.join(OUT, "gemma3/expected.safetensors"))
    report["gemma3"] = {"generated": generated, "smallest_top2_gap": min(gaps)}

import transformers
meta = {
    "question": QUESTION,
    "new_tokens": NEW_TOKENS,
    "made_with": {"torch": torch.__version__, "transformers": transformers.__version__},
    "clip_model": "fixtures/hf-parity/llava-clip/model",
    "report": report,
}
json.dump(meta, open(os.path.join(OUT, "meta.json"), "w"), indent=1)
print(json.dumps(report))
