"""Proves that Hugging Face PEFT loads a LoRA adapter directory and computes the logits we expect.

    python scripts/peft_check.py --base BASE_MODEL_DIR --adapter ADAPTER_DIR \
        --inputs INPUTS.safetensors --expected OURS.safetensors [--key logits] [--atol 2e-4 --rtol 1e-4]

Loads the base's class (`AutoModelForImageTextToText`: LLaVA, Gemma 3 or PaliGemma) from
BASE_MODEL_DIR (float32, eval, CPU, eager attention), then `PeftModel.from_pretrained(base,
ADAPTER_DIR)`, runs it on input_ids / attention_mask / pixel_values (and token_type_ids, when given)
from INPUTS and compares its logits, where attention_mask == 1, with tensor KEY of OURS.

It fails (exit 1) when the logits differ beyond atol/rtol, and also when PEFT did not take every
tensor of the adapter file, because PEFT itself only warns (or says nothing) about such adapters:
  * PEFT raised, or warned about missing / unexpected / mismatched keys while loading;
  * loading the file's tensors again with `set_peft_model_state_dict` reports unexpected keys
    (tensors PEFT drops) or missing adapter parameters (LoRA or modules_to_save weights left at their
    initial values);
  * the adapter's state dict as PEFT sees it after loading (`get_peft_model_state_dict`) does not have
    exactly the file's keys, shapes and values (skip the key-set part with --allow-key-remap, for
    adapters in an older layout that PEFT renames on load).

Prints the problems, the max abs difference, and last one JSON line:
    {"ok": true/false, "max_abs_diff": ..., "peft": "<version>", "transformers": "<version>", ...}
Exit 0 when ok, 1 otherwise (2 for bad command-line use).
"""

import argparse
import json
import sys
import traceback
import warnings

import peft
import torch
import transformers
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

ADAPTER_NAME = "default"
SUSPICIOUS = ("missing", "unexpected", "mismatch", "not initialized", "were not used", "not found")


def forward(model, inputs):
    kw = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    for key in ("pixel_values", "token_type_ids"):
        if key in inputs:
            kw[key] = inputs[key]
    with torch.no_grad():
        return model(**kw).logits.float()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="a transformers vision-language model directory (LLaVA, Gemma 3, PaliGemma)")
    ap.add_argument("--adapter", required=True, help="PEFT adapter directory (adapter_config.json + weights)")
    ap.add_argument("--inputs", required=True, help="safetensors with input_ids, attention_mask[, pixel_values]")
    ap.add_argument("--expected", required=True, help="safetensors with our logits")
    ap.add_argument("--key", default="logits", help="tensor name in --expected (default: logits)")
    ap.add_argument("--atol", type=float, default=2e-4)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument(
        "--allow-key-remap",
        action="store_true",
        help="do not require the file's keys to equal PEFT's own state-dict keys (still requires that PEFT "
        "reports no unexpected or missing keys)",
    )
    args = ap.parse_args()

    problems = []
    result = {
        "ok": False,
        "max_abs_diff": None,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "key": args.key,
    }

    def finish():
        result["ok"] = not problems and result["max_abs_diff"] is not None
        if problems:
            result["problems"] = problems
            for p in problems:
                print(f"FAIL: {p}", file=sys.stderr)
        if result["max_abs_diff"] is not None:
            print(f"max abs diff ({args.key}, attention_mask == 1): {result['max_abs_diff']:.3e}")
        print(json.dumps(result), flush=True)
        sys.exit(0 if result["ok"] else 1)

    # Eager attention: transformers' default SDPA path drops Gemma 2's attention soft-cap.
    base = AutoModelForImageTextToText.from_pretrained(
        args.base, dtype=torch.float32, attn_implementation="eager").eval()

    # 1. PEFT's own load, with every warning it gives recorded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(base, args.adapter, adapter_name=ADAPTER_NAME, torch_device="cpu")
        except Exception as e:  # noqa: BLE001 - any failure to load is a failed check
            traceback.print_exc()
            problems.append(f"PeftModel.from_pretrained raised {type(e).__name__}: {e}")
            finish()
    model.eval()
    for w in caught:
        msg = str(w.message)
        print(f"warning while loading the adapter: {w.category.__name__}: {msg}", file=sys.stderr)
        if any(s in msg.lower() for s in SUSPICIOUS):
            problems.append(f"PEFT warned while loading: {msg}")

    # 2. load the file's tensors again and look at what PEFT did with each of them
    file_sd = load_peft_weights(args.adapter, device="cpu")
    result["adapter_tensors"] = len(file_sd)
    if not file_sd:
        problems.append("the adapter file holds no tensors")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            res = set_peft_model_state_dict(model, file_sd, adapter_name=ADAPTER_NAME)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            problems.append(f"set_peft_model_state_dict raised {type(e).__name__}: {e}")
            res = None
    if res is not None:
        if res.unexpected_keys:
            problems.append(f"PEFT ignores these adapter tensors (unexpected keys): {sorted(res.unexpected_keys)}")
        marker = f".{ADAPTER_NAME}."
        missing = sorted(k for k in res.missing_keys if marker in k)
        if missing:
            problems.append(f"adapter parameters the file does not set (missing keys): {missing}")

    # 3. round trip: PEFT's view of the loaded adapter must be the file
    peft_sd = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    only_file = sorted(set(file_sd) - set(peft_sd))
    only_peft = sorted(set(peft_sd) - set(file_sd))
    if (only_file or only_peft) and not args.allow_key_remap:
        if only_file:
            problems.append(f"keys in the file that PEFT's state dict does not have: {only_file}")
        if only_peft:
            problems.append(f"keys of PEFT's state dict that the file does not have: {only_peft}")
    for k in sorted(set(file_sd) & set(peft_sd)):
        a, b = file_sd[k], peft_sd[k]
        if a.shape != b.shape:
            problems.append(f"{k}: shape {tuple(a.shape)} in the file, {tuple(b.shape)} in PEFT")
        elif not torch.equal(a.float(), b.float().cpu()):
            problems.append(f"{k}: PEFT holds other values than the file")
    print(
        f"adapter: {len(file_sd)} tensors in the file, {len(peft_sd)} in PEFT's state dict, "
        f"{len(set(file_sd) & set(peft_sd))} in both"
    )

    # 4. logits
    inputs = load_file(args.inputs)
    ours_all = load_file(args.expected)
    if args.key not in ours_all:
        problems.append(f"{args.expected} has no tensor {args.key!r} (has {sorted(ours_all)})")
        finish()
    ours = ours_all[args.key].float()
    logits = forward(model, inputs)
    if logits.shape != ours.shape:
        problems.append(f"shape: PEFT logits {tuple(logits.shape)}, {args.key} {tuple(ours.shape)}")
        finish()
    mask = inputs["attention_mask"].bool()
    a, b = logits[mask], ours[mask]
    result["max_abs_diff"] = (a - b).abs().max().item()
    if not torch.allclose(a, b, atol=args.atol, rtol=args.rtol):
        problems.append(
            f"logits differ beyond atol {args.atol}, rtol {args.rtol}: max abs diff {result['max_abs_diff']:.3e}"
        )
    # how much the adapter moves the logits, so a passing check is seen not to be vacuous
    with model.disable_adapter():
        base_logits = forward(model, inputs)
    result["adapter_effect"] = (logits[mask] - base_logits[mask]).abs().max().item()
    print(f"adapter effect: max |PEFT logits - base logits| = {result['adapter_effect']:.4f}")
    finish()


if __name__ == "__main__":
    main()
