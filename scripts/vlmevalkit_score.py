"""Scores the hand-made fixtures' VLMEvalKit TSV rows with VLMEvalKit's own rule-based code (its
`exact_matching` judge: no LLM), the reference `llava score`'s `vlmevalkit_*` metrics are tested
against. VLMEvalKit is not on PyPI, so this runs on a checkout of it and its output is stored
(fixtures/harness/<bench>/vlmevalkit.json); the functions are taken from the checkout's source
files as they are, without importing the package:

    git clone https://github.com/open-compass/VLMEvalKit /tmp/VLMEvalKit   # e8e78f05 was used
    python scripts/vlmevalkit_score.py --vlmevalkit /tmp/VLMEvalKit --bench mmstar \
        > fixtures/harness/mmstar/vlmevalkit.json

Benchmarks: mmstar, ai2d, mmmu (`mcq_vanilla_eval` without a judge: `can_infer`, else `Z`;
MMMU's open questions through `MMMU_preproc`), hallusionbench (`YOrN_Extraction`, then
`Hallusion_rating`). Answers are the fixture's answers.jsonl, re-keyed to the TSV's rows by
position.
"""

import argparse
import ast
import csv
import json
import os
import string
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pandas as pd


def functions(path, names, namespace):
    """Executes the named top-level functions (and constants) of a source file in `namespace`."""
    with open(path) as f:
        tree = ast.parse(f.read())
    wanted = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.Assign)) and (getattr(n, "name", None) in names or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in names for t in n.targets)))]
    exec(compile(ast.Module(body=wanted, type_ignores=[]), path, "exec"), namespace)
    return namespace


class Logger:
    def __getattr__(self, name):
        return lambda *a, **k: None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vlmevalkit", required=True, help="a VLMEvalKit checkout")
    parser.add_argument("--bench", required=True, choices=["mmstar", "ai2d", "mmmu", "hallusionbench", "pope", "mme"])
    args = parser.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "harness", args.bench)
    kit = args.vlmevalkit
    commit = subprocess.run(["git", "-C", kit, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    ns = {"re": __import__("re"), "os": os, "cp": __import__("copy"), "string": string, "np": np, "pd": pd, "defaultdict": defaultdict, "logger": Logger(), "Counter": __import__("collections").Counter, "MMB_abbrs": {}}
    functions(os.path.join(kit, "vlmeval/utils/matching_util.py"), {"_VERBOSE_ANSWER_RE", "can_infer_option", "can_infer_text", "can_infer"}, ns)
    functions(os.path.join(kit, "vlmeval/dataset/utils/multiple_choice.py"), {"build_choices", "MMMU_preproc", "report_acc", "build_prompt"}, ns)
    functions(os.path.join(kit, "vlmeval/smp/vlm.py"), {"build_option_str"}, ns)
    functions(os.path.join(kit, "vlmeval/smp/misc.py"), {"process_punctuation"}, ns)
    functions(os.path.join(kit, "vlmeval/dataset/utils/yorn.py"), {"YOrN_Extraction", "Hallusion_rating", "POPE_rating", "MME_rating"}, ns)
    ns["d2df"] = lambda d: pd.DataFrame({k: [v] for k, v in d.items()})

    with open(os.path.join(root, "data.tsv"), newline="") as f:
        data = pd.read_csv(f, sep="\t", keep_default_na=True, dtype=str)
    data = data.drop(columns=["image"])
    with open(os.path.join(root, "answers.jsonl")) as f:
        answers = [json.loads(line)["text"] for line in f if line.strip()]
    assert len(answers) == len(data)
    data["prediction"] = answers
    data["index"] = data["index"].astype(str)

    extra = {}
    if args.bench in ("pope", "mme"):
        data["extracted"] = [ns["YOrN_Extraction"](p) for p in data["prediction"]]
        data["score"] = data["answer"] == data["extracted"]
        ns["load"] = lambda _: data.copy()
        if args.bench == "pope":
            rating = ns["POPE_rating"]("data")
            overall = rating[rating["split"] == "Overall"].iloc[0]
            metrics = {"f1": float(overall["Overall"]), "acc": float(overall["acc"])}
        else:
            rating = ns["MME_rating"]("data")
            metrics = {"perception": float(rating["perception"][0]), "reasoning": float(rating["reasoning"][0])}
        per_question = {i: float(s) for i, s in zip(data["index"], data["score"])}
    elif args.bench == "hallusionbench":
        data["extracted"] = [ns["YOrN_Extraction"](p) for p in data["prediction"]]
        data["score"] = data["answer"] == data["extracted"]
        ns["load"] = lambda _: data.copy()
        rating = ns["Hallusion_rating"]("data")
        overall = rating[rating["split"] == "Overall"].iloc[0]
        metrics = {"aAcc": float(overall["aAcc"]), "fAcc": float(overall["fAcc"]), "qAcc": float(overall["qAcc"])}
        per_question = {i: float(s) for i, s in zip(data["index"], data["score"])}
    else:
        answer_map = dict(zip(data["index"], data["answer"]))
        if args.bench == "mmmu":
            data = ns["MMMU_preproc"](data)
            answer_map = {k: (v if v in list(string.ascii_uppercase) else "A") for k, v in answer_map.items()}
        hits = []
        prompts = {}
        for _, item in data.iterrows():
            choices = ns["build_choices"](item)
            opt = ns["can_infer"](item["prediction"], dict(choices))
            if not opt:
                # What VLMEvalKit's extractor would be asked (`extract_answer_from_item`).
                prompts[item["index"]] = ns["build_prompt"](item["question"], ns["build_option_str"](choices), item["prediction"])
            hits.append(int((opt or "Z") == answer_map[item["index"]]))
        data["hit"] = hits
        report = ns["report_acc"](data)
        metrics = {"overall": float(report["Overall"][0])}
        per_question = dict(zip(data["index"], map(float, hits)))
        extra["extractor_prompts"] = prompts

    print(json.dumps({"vlmevalkit": commit, "bench": args.bench, "metrics": metrics, "per_question": per_question, **extra}, indent=1, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
