# The Python reference (HF transformers + PyTorch) the project measures itself against: a copy of
# the measurement script behind the throughput table of the shared notes, run by scripts/gpu-check.sh.
# Reference throughput of the Python stack: HF transformers LLaVA-Gemma-2B (CLIP ViT-L/14-336), random weights, one CUDA GPU.
# Run on a machine with torch + transformers: `python3 hf_llava_baseline.py`; writes hf_baseline.json into $RESULTS_DIR (default /tmp).
# Env: PRETRAIN_B (default 8), FINETUNE_B (4), GEN_TOKENS (128), GEN_BATCH (32), GEN_BATCH_TOKENS (64). Measure the Rust side in the same run, on the same GPU.
import json, os, time, sys, torch
from transformers import GemmaConfig, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration
torch.backends.cuda.matmul.allow_tf32 = True
out = os.environ.get("RESULTS_DIR", "/tmp")
res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
import transformers; res["transformers"] = transformers.__version__
def log(k, v):
    res[k] = v; print(k, v, flush=True)
    json.dump(res, open(f"{out}/hf_baseline.json", "w"), indent=1)
text = GemmaConfig(vocab_size=256128, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
    num_attention_heads=8, num_key_value_heads=1, head_dim=256, hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
vis = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
cfg = LlavaConfig(vision_config=vis, text_config=text, image_token_index=256000, projector_hidden_act="gelu",
    vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576)
cfg._attn_implementation = "sdpa"
dev = torch.device("cuda")
t0 = time.time()
with torch.device(dev):
    model = LlavaForConditionalGeneration(cfg)
torch.cuda.synchronize(); log("init_s", round(time.time() - t0, 1))
n_all = sum(p.numel() for p in model.parameters())
vt = model.model.vision_tower if hasattr(model, "model") and hasattr(model.model, "vision_tower") else model.vision_tower
n_vis = sum(p.numel() for p in vt.parameters())
n_emb = text.vocab_size * text.hidden_size
n_lm = n_all - n_vis
log("params", {"all": n_all, "vision": n_vis, "lm_plus_connector": n_lm})
PEAK = 989.4e12
def batch(B, L):
    ids = torch.randint(0, 255000, (B, L), device=dev)
    ids[:, 1:577] = 256000
    labels = ids.clone(); labels[:, :577] = -100
    pix = torch.randn(B, 3, 336, 336, device=dev)
    return ids, labels, pix
def train_bench(name, B, L, train_lm, steps=8, warm=3, dtype_params=torch.float32):
    model.to(dtype_params)
    for p in vt.parameters(): p.requires_grad_(False)
    for n, p in model.named_parameters():
        if "vision_tower" in n: continue
        p.requires_grad_(train_lm or "projector" in n)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    ids, labels, pix = batch(B, L)
    torch.cuda.reset_peak_memory_stats()
    for i in range(warm + steps):
        if i == warm: torch.cuda.synchronize(); t = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, pixel_values=pix.to(dtype_params), labels=labels).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(); dt = (time.time() - t) / steps
    T = B * L
    lm_mat = n_lm - n_emb  # embedding lookup is no matmul; tied lm_head counted below
    fl_lm = (6 if train_lm else 4) * (lm_mat + n_emb) * T
    fl_vis = 2 * n_vis * 577 * B
    log(name, {"B": B, "L": L, "step_s": round(dt, 4), "tokens_per_s": round(T / dt), "samples_per_s": round(B / dt, 2),
               "mfu": round((fl_lm + fl_vis) / dt / PEAK, 3), "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)})
    del opt; model.zero_grad(set_to_none=True); torch.cuda.empty_cache()
try:
    train_bench("pretrain_connector_fp32master_autocast", int(os.environ.get("PRETRAIN_B", 8)), 640, False)
except Exception as e: log("pretrain_err", repr(e)[:300])
try:
    train_bench("finetune_fp32master_autocast", int(os.environ.get("FINETUNE_B", 4)), 1024, True)
except Exception as e: log("finetune_err", repr(e)[:300])
torch.cuda.empty_cache()
try:
    model.to(torch.bfloat16); model.eval()
    ids, _, pix = batch(1, 608)
    with torch.no_grad():
        for rep in range(2):
            torch.cuda.synchronize(); t = time.time()
            o = model(input_ids=ids, pixel_values=pix.bfloat16())
            torch.cuda.synchronize(); ttft = time.time() - t
            t = time.time()
            g = model.generate(input_ids=ids, pixel_values=pix.bfloat16(), max_new_tokens=int(os.environ.get("GEN_TOKENS", 128)), min_new_tokens=int(os.environ.get("GEN_TOKENS", 128)), do_sample=False)
            torch.cuda.synchronize(); dt = time.time() - t
    log("generate_bf16_b1", {"prefill_s": round(ttft, 4), "new_tokens": g.shape[1] - ids.shape[1], "gen_s": round(dt, 3),
        "tokens_per_s": round((g.shape[1] - ids.shape[1]) / dt, 1)})
except Exception as e: log("generate_err", repr(e)[:300])
# Batched greedy generation, as the evaluation runs it: GEN_BATCH prompts (default 32) of 608
# tokens, GEN_BATCH_TOKENS new tokens each (64); 0 skips it.
try:
    gb, gt = int(os.environ.get("GEN_BATCH", 32)), int(os.environ.get("GEN_BATCH_TOKENS", 64))
    if gb > 0:
        ids, _, pix = batch(gb, 608)
        with torch.no_grad():
            for rep in range(2):
                torch.cuda.synchronize(); t = time.time()
                g = model.generate(input_ids=ids, pixel_values=pix.bfloat16(), max_new_tokens=gt, min_new_tokens=gt, do_sample=False)
                torch.cuda.synchronize(); dt = time.time() - t
        new = g.shape[1] - ids.shape[1]
        log(f"generate_bf16_b{gb}", {"batch": gb, "new_tokens": new, "gen_s": round(dt, 3), "tokens_per_s": round(gb * new / dt, 1)})
except Exception as e: log("generate_batch_err", repr(e)[:300])
