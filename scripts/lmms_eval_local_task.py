"""Writes an lmms-eval task that reads a benchmark from a local JSON-lines copy (lmms-eval's row
fields, each row naming its image file in `image_path`) and asks and scores it with lmms-eval's own
task code, so that lmms-eval can evaluate `llava serve` without downloading the benchmark:

    python scripts/lmms_eval_local_task.py --bench mmstar --data /data/mmstar.jsonl --out tasks/
    python -m lmms_eval --model openai \
        --model_args model_version=llava,base_url=http://127.0.0.1:8000/v1,api_key=none \
        --tasks llava_local_mmstar --include_path tasks/ --output_path out/ --log_samples

`llava eval --bench mmstar --data /data` reads the same file (`mmstar.jsonl`) with the same
prompts. Benchmarks: mmstar, ocrbench, ai2d, textvqa, hallusionbench (MMMU's rows hold several
images and are not supported here).
"""

import argparse
import os
import textwrap

TASKS = {
    "mmstar": dict(
        module="lmms_eval.tasks.mmstar.utils",
        text="mmstar_doc_to_text",
        process="mmstar_process_results",
        metrics=[("average", "mmstar_aggregate_results")],
        kwargs={"pre_prompt": "", "post_prompt": "\\nAnswer with the option's letter from the given choices directly"},
        target="answer",
    ),
    "ocrbench": dict(
        module="lmms_eval.tasks.ocrbench.utils",
        text="ocrbench_doc_to_text",
        process="ocrbench_process_results",
        metrics=[("ocrbench_accuracy", "ocrbench_aggregate_accuracy")],
        kwargs={"pre_prompt": "", "post_prompt": ""},
        target="answer",
    ),
    "textvqa": dict(
        module="lmms_eval.tasks.textvqa.utils",
        text="textvqa_doc_to_text",
        process="textvqa_process_results",
        metrics=[("exact_match", "mean")],
        kwargs={"pre_prompt": "", "post_prompt": "\\nAnswer the question using a single word or phrase.", "ocr": False},
        target="answer",
    ),
    "hallusionbench": dict(
        module="lmms_eval.tasks.hallusion_bench.evaluate_hb",
        text="hb_doc_to_text",
        process="hb_process_results",
        metrics=[("aAcc", "hb_aggregation_result_aAcc_intern"), ("qAcc", "hb_aggregation_result_qAcc_intern"), ("fAcc", "hb_aggregation_result_fAcc_intern")],
        kwargs={"pre_prompt": "", "post_prompt": ""},
        target="gt_answer_details",
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", required=True, choices=sorted(TASKS))
    parser.add_argument("--data", required=True, help="the benchmark's rows as JSON lines")
    parser.add_argument("--out", required=True, help="the folder to pass as --include_path")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    t = TASKS[args.bench]
    data = os.path.abspath(args.data)
    name = f"llava_local_{args.bench}"
    os.makedirs(args.out, exist_ok=True)
    metric_lines = []
    for metric, agg in t["metrics"]:
        agg_ref = agg if agg == "mean" else f"!function {name}_utils.{agg}"
        metric_lines.append(f"  - metric: {metric}\n    aggregation: {agg_ref}\n    higher_is_better: true")
    kwargs = "\n".join(f"    {k}: {v if not isinstance(v, str) else chr(34) + v + chr(34)}" for k, v in t["kwargs"].items())
    yaml = f"""\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function {name}_utils.doc_to_visual
doc_to_text: !function {name}_utils.{t["text"]}
doc_to_target: "{t["target"]}"
process_results: !function {name}_utils.{t["process"]}
generation_kwargs:
  max_new_tokens: {args.max_new_tokens}
  temperature: 0
  do_sample: false
metric_list:
{chr(10).join(metric_lines)}
lmms_eval_specific_kwargs:
  default:
{kwargs}
metadata:
  version: 0.0
"""
    names = [t["text"], t["process"]] + [agg for _, agg in t["metrics"] if agg != "mean"]
    utils = textwrap.dedent(f"""\
        # Written by llava-gemma-rs scripts/lmms_eval_local_task.py: lmms-eval's own task code,
        # with images read from the files the local rows name.
        import os

        from PIL import Image

        from {t["module"]} import {", ".join(names)}  # noqa: F401

        DATA_DIR = {os.path.dirname(data)!r}


        def doc_to_visual(doc):
            return [Image.open(os.path.join(DATA_DIR, doc["image_path"])).convert("RGB")]
        """)
    with open(os.path.join(args.out, f"{name}.yaml"), "w") as f:
        f.write(yaml)
    with open(os.path.join(args.out, f"{name}_utils.py"), "w") as f:
        f.write(utils)
    print(name)


if __name__ == "__main__":
    main()
