#!/usr/bin/env python3
"""The Python reference for `llava bench-train`: the same preset, shapes and step through
HF transformers + PyTorch, printing the same JSON keys, so `cargo xtask bench-compare` can put
the two side by side. Not part of the test suite; needs torch and transformers.

A step is what our trainer does: forward, loss on the labelled tokens, backward, gradient
clipping at 1.0, AdamW (fused where PyTorch has it). On CUDA the weights stay fp32 under bf16
autocast (as `hf_llava_baseline.py` runs them); on the CPU everything is fp32.

    python3 scripts/bench_reference.py --preset bench-small --stage 2 --device cpu --json
"""
import argparse
import json
import os
import time

import torch
from transformers import (CLIPVisionConfig, Gemma2Config, Gemma3TextConfig, GemmaConfig, LlavaConfig,
                          LlavaForConditionalGeneration)


def gemma2(text, window):
    """`text` (a GemmaConfig) as Gemma 2, as llava-model's `as_gemma2` makes it."""
    return Gemma2Config(vocab_size=text.vocab_size, hidden_size=text.hidden_size,
                        intermediate_size=text.intermediate_size, num_hidden_layers=text.num_hidden_layers,
                        num_attention_heads=text.num_attention_heads, num_key_value_heads=text.num_key_value_heads,
                        head_dim=text.head_dim, hidden_activation="gelu_pytorch_tanh",
                        max_position_embeddings=text.max_position_embeddings, rms_norm_eps=1e-6,
                        query_pre_attn_scalar=text.head_dim, sliding_window=window,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=True)


def gemma3(text, window):
    """`text` as Gemma 3, as llava-model's `as_gemma3` makes it (layers alternate sliding/global)."""
    n = text.num_hidden_layers
    return Gemma3TextConfig(vocab_size=text.vocab_size, hidden_size=text.hidden_size,
                            intermediate_size=text.intermediate_size, num_hidden_layers=n,
                            num_attention_heads=text.num_attention_heads,
                            num_key_value_heads=text.num_key_value_heads, head_dim=text.head_dim,
                            hidden_activation="gelu_pytorch_tanh",
                            max_position_embeddings=text.max_position_embeddings, rms_norm_eps=1e-6,
                            query_pre_attn_scalar=text.head_dim, sliding_window=window,
                            layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)],
                            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
                            tie_word_embeddings=True)


def preset(name):
    for family, make in [("-gemma2", gemma2), ("-gemma3", gemma3)]:
        if name.endswith(family):
            config = preset(name[: -len(family)])
            config.text_config = make(config.text_config, 128)
            return config
    if name == "bench-small":
        text = GemmaConfig(vocab_size=32000, hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                           num_attention_heads=8, num_key_value_heads=1, head_dim=64,
                           hidden_activation="gelu_pytorch_tanh", max_position_embeddings=4096,
                           rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
        vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                  num_attention_heads=4, image_size=112, patch_size=14, hidden_act="quick_gelu")
        return LlavaConfig(vision_config=vision, text_config=text, image_token_index=31999,
                           projector_hidden_act="gelu", vision_feature_layer=-2,
                           vision_feature_select_strategy="default", image_seq_length=64)
    if name == "paper-2b-clip":
        text = GemmaConfig(vocab_size=256128, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                           num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                           hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
                           rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                                  hidden_act="quick_gelu")
        return LlavaConfig(vision_config=vision, text_config=text, image_token_index=256000,
                           projector_hidden_act="gelu", vision_feature_layer=-2,
                           vision_feature_select_strategy="default", image_seq_length=576)
    raise SystemExit(f"unknown preset {name} (bench-small, paper-2b-clip, either with -gemma2 or -gemma3)")


def peak_host_memory():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="bench-small")
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--micro-batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--loss-tokens", type=int)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    small = a.preset.startswith("bench-small")
    B = a.micro_batch or (4 if small or a.stage == 2 else 8)
    L = a.seq or (256 if small else (640 if a.stage == 1 else 1024))
    cfg = preset(a.preset)
    # Gemma 2 needs the eager path (SDPA drops its attention soft-cap); the rest run SDPA.
    cfg._attn_implementation = "eager" if a.preset.endswith("-gemma2") else "sdpa"
    dev = torch.device("cuda" if a.device.startswith("cuda") else "cpu")
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlavaForConditionalGeneration(cfg)
    model.train()
    per_image = cfg.image_seq_length
    labelled = min(a.loss_tokens or (96 if small else L - per_image - 1), L - per_image - 1)
    for n, prm in model.named_parameters():
        if "vision_tower" in n:
            prm.requires_grad_(False)
        else:
            prm.requires_grad_(a.stage == 2 or "projector" in n)
    params = [q for q in model.parameters() if q.requires_grad]
    try:
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, min(cfg.text_config.vocab_size, cfg.image_token_index), (B, L), device=dev)
    ids[:, 0] = 2
    ids[:, 1:1 + per_image] = cfg.image_token_index
    labels = ids.clone()
    labels[:, :L - labelled] = -100
    side = cfg.vision_config.image_size
    pix = torch.randn(B, 3, side, side, device=dev)
    cuda = dev.type == "cuda"

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, pixel_values=pix, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    for _ in range(a.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    dt = (time.time() - t) / a.steps
    n_vis = sum(q.numel() for n, q in model.named_parameters() if "vision_tower" in n)
    n_lm = sum(q.numel() for n, q in model.named_parameters() if "vision_tower" not in n)
    flops = (6 if a.stage == 2 else 4) * n_lm * B * L + 2 * n_vis * (per_image + 1) * B
    out = {
        "preset": a.preset, "stage": a.stage, "device": str(dev), "dtype": "bf16-autocast" if cuda else "f32",
        "micro_batch": B, "seq": L, "loss_tokens": labelled, "steps": a.steps, "step_s": dt,
        "tokens_per_s": B * L / dt, "samples_per_s": B / dt,
        "peak_memory_bytes": torch.cuda.max_memory_reserved() if cuda else peak_host_memory(),
        "mfu": flops / dt / 989.4e12 if cuda else None, "loss": loss.item(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
