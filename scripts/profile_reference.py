# Kernel-by-kernel profile of the Python reference's stage-2 step (HF transformers LLaVA-Gemma-2B
# with CLIP-L/336, random weights, fp32 weights under bf16 autocast, fused AdamW: the step that
# hf_llava_baseline.py times), written in the format of `llava bench-train --profile`:
# total_ms, calls, name, largest first. Usage: python3 profile_reference.py OUT.tsv [B] [L]
# SMALL=1 shrinks the model for a dry run on a CPU.
import os, sys, torch
from transformers import GemmaConfig, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

out, B, L = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4, int(sys.argv[3]) if len(sys.argv) > 3 else 1024
small = bool(os.environ.get("SMALL"))
dev = torch.device("cpu" if small else "cuda")
torch.backends.cuda.matmul.allow_tf32 = True
text = GemmaConfig(vocab_size=256128, hidden_size=256 if small else 2048, intermediate_size=512 if small else 16384,
    num_hidden_layers=2 if small else 18, num_attention_heads=8, num_key_value_heads=1, head_dim=32 if small else 256,
    hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
    tie_word_embeddings=True)
vis = CLIPVisionConfig(hidden_size=64 if small else 1024, intermediate_size=128 if small else 4096,
    num_hidden_layers=2 if small else 24, num_attention_heads=4 if small else 16, image_size=336, patch_size=14,
    projection_dim=768, hidden_act="quick_gelu")
cfg = LlavaConfig(vision_config=vis, text_config=text, image_token_index=256000, projector_hidden_act="gelu",
    vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576)
cfg._attn_implementation = "sdpa"
with torch.device(dev):
    model = LlavaForConditionalGeneration(cfg)
for n, p in model.named_parameters():
    p.requires_grad_("vision_tower" not in n)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=not small)
ids = torch.randint(0, 255000, (B, L), device=dev)
ids[:, 1:577] = 256000
labels = ids.clone(); labels[:, :577] = -100
pix = torch.randn(B, 3, 336, 336, device=dev)

def step():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not small):
        loss = model(input_ids=ids, pixel_values=pix, labels=labels).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)

for _ in range(3):
    step()
acts = [torch.profiler.ProfilerActivity.CPU] + ([] if small else [torch.profiler.ProfilerActivity.CUDA])
with torch.profiler.profile(activities=acts) as prof:
    for _ in range(2):
        step()
    if not small:
        torch.cuda.synchronize()
rows = {}
for e in prof.events():
    on_device = e.device_type != torch.autograd.DeviceType.CPU
    if small or on_device:
        t, c = rows.get(e.name[:240], (0.0, 0))
        rows[e.name[:240]] = (t + (e.time_range.elapsed_us() if on_device else e.cpu_time_total) / 1000.0, c + 1)
with open(out, "w") as f:
    f.write("total_ms\tcalls\tname\n")
    for name, (t, c) in sorted(rows.items(), key=lambda r: -r[1][0]):
        f.write(f"{t:.3f}\t{c}\t{name}\n")
print("wrote", out, len(rows), "kernels")
