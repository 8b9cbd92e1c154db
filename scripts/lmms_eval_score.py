"""Scores an answer file with lmms-eval's own task code (lmms-eval 0.7.3 from PyPI), the reference
`llava score` is tested against for MMStar, MMMU, OCRBench, AI2D, TextVQA and HallusionBench.

    python scripts/lmms_eval_score.py --bench mmstar --data docs.json --answers answers.jsonl

`--data` is a JSON array of the benchmark's rows in lmms-eval's (Hugging Face) field names,
images left out; `--answers` is JSON lines in LLaVA's format (`question_id`, `text`), where
`question_id` is the row's id (`index`, `id` or `question_id` as `llava score` reads it). Every
row needs an answer. Prints one JSON object: `metrics` (each value as lmms-eval's aggregation
returns it) and `per_question` (each question's score from the task's `process_results`).
"""

import argparse
import contextlib
import json
import random
import sys
import tempfile
import types


def row_id(bench, doc):
    if bench == "hallusionbench":
        return "_".join(str(doc[k]) for k in ("category", "subcategory", "set_id", "figure_id", "question_id"))
    for key in ("index", "id", "question_id"):
        if key in doc:
            return str(doc[key])
    raise KeyError(f"row without an id: {doc}")


def mmstar(docs, preds):
    from lmms_eval.tasks.mmstar import utils

    results = [utils.mmstar_process_results(d, [p]) for d, p in zip(docs, preds)]
    metrics = {"average": utils.mmstar_aggregate_results([r["average"] for r in results])}
    for category in utils.eval_type_dict:
        of = [r[category] for r in results if category in r]
        if of:
            metrics[category] = utils.mmstar_aggregate_results(of)
    return metrics, [r["average"]["score"] for r in results]


def mmmu(docs, preds):
    from lmms_eval.tasks._task_utils import mmmu_mcq_utils
    from lmms_eval.tasks.mmmu import utils

    # MMMU picks a random letter when it finds none; make that pick always wrong, as we count it.
    mmmu_mcq_utils.random = types.SimpleNamespace(choice=lambda choices: "no answer found")
    results = [utils.mmmu_process_results(d, [p])["mmmu_acc"] for d, p in zip(docs, preds)]
    per_question = []
    for r in results:
        _, acc = utils.evaluate_mmmu([r])
        per_question.append(acc["acc"])
    return {"accuracy": utils.mmmu_aggregate_results(results)}, per_question


def ocrbench(docs, preds):
    from lmms_eval.tasks.ocrbench import utils

    results = [utils.ocrbench_process_results(d, [p])["ocrbench_accuracy"] for d, p in zip(docs, preds)]
    with tempfile.TemporaryDirectory() as out:
        accuracy = utils.ocrbench_aggregate_accuracy(results, types.SimpleNamespace(output_path=out))
    metrics = {"final_score": accuracy * 1000}
    metrics.update(utils.OCRBench_score)
    return metrics, [r["score"] for r in results]


def ai2d(docs, preds):
    from lmms_eval.api.metrics import exact_match_hf_evaluate
    from lmms_eval.tasks.ai2d import utils

    flt = utils.MultiChoiceRegexFilter(regex_pattern=r"([A-Z])\.", group_select=0, ignore_case=True, ignore_punctuation=True)
    filtered = flt.apply([[p] for p in preds], docs)
    per_question = []
    for d, f in zip(docs, filtered):
        target = utils.ai2d_doc_to_target(d, "mcq")
        per_question.append(float(exact_match_hf_evaluate([f], [target], ignore_case=True, ignore_punctuation=True)["exact_match"]))
    return {"accuracy": sum(per_question) / len(per_question)}, per_question


def textvqa(docs, preds):
    from lmms_eval.tasks.textvqa import utils

    per_question = [utils.textvqa_process_results(json.loads(json.dumps(d)), [p])["exact_match"] for d, p in zip(docs, preds)]
    return {"accuracy": sum(per_question) / len(per_question)}, per_question


def hallusionbench(docs, preds, grades=None):
    from lmms_eval.tasks.hallusion_bench import evaluate_hb, utils

    results = [evaluate_hb.hb_process_results(d, [p])["aAcc"] for d, p in zip(docs, preds)]
    metrics = {}
    for name in ("aAcc", "fAcc", "qAcc"):
        rows = [dict(r) for r in results]
        metrics[name] = 100 * evaluate_hb.hb_aggregation_result_intern(rows, name)
    if grades is not None:
        # The judge's verdicts in place of GPT-4's, then lmms-eval's own aggregation.
        entry = evaluate_hb.correctness_entry
        judged = []
        for d, r in zip(docs, results):
            r = dict(r)
            r[entry] = str(grades[row_id("hallusionbench", d)])
            judged.append(r)
        judged = utils.assign_correctness(judged, correctness_entry=entry)
        a = utils.get_eval_all(judged, model_correctness_entry=entry)
        f = utils.get_eval_fig(judged)
        q = utils.get_eval_pair_all(judged, model_correctness_entry=entry)
        metrics["judged_aAcc"] = 100 * a["correct"] / a["total"]
        metrics["judged_fAcc"] = 100 * f["correct"] / f["total"]
        metrics["judged_qAcc"] = 100 * q["correct"] / q["total"]
    per_question = [float(("1" if p.lower().find("yes") != -1 else "0") == d["gt_answer"]) for d, p in zip(docs, preds)]
    return metrics, per_question


BENCHES = {"mmstar": mmstar, "mmmu": mmmu, "ocrbench": ocrbench, "ai2d": ai2d, "textvqa": textvqa, "hallusionbench": hallusionbench}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", required=True, choices=sorted(BENCHES))
    parser.add_argument("--data", required=True)
    parser.add_argument("--answers", required=True)
    parser.add_argument("--grades", help="HallusionBench: a judge's grades ({question_id, correctness 0/1/2} lines)")
    args = parser.parse_args()
    random.seed(0)
    with open(args.data) as f:
        docs = json.load(f)
    answers = {}
    with open(args.answers) as f:
        for line in f:
            if line.strip():
                a = json.loads(line)
                answers[str(a["question_id"])] = a["text"]
    ids = [row_id(args.bench, d) for d in docs]
    missing = [i for i in ids if i not in answers]
    if missing:
        sys.exit(f"{args.answers}: no answer for {missing[:5]}")
    # Some task code prints its tables to stdout; keep stdout for the JSON.
    extra = {}
    if args.grades:
        with open(args.grades) as f:
            extra["grades"] = {str(g["question_id"]): g["correctness"] for g in map(json.loads, filter(str.strip, f))}
    with contextlib.redirect_stdout(sys.stderr):
        metrics, per_question = BENCHES[args.bench](docs, [answers[i] for i in ids], **extra)
    import lmms_eval

    print(json.dumps({
        "lmms_eval": getattr(lmms_eval, "__version__", "0.7.3"),
        "bench": args.bench,
        "metrics": metrics,
        "per_question": dict(zip(ids, per_question)),
    }, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
