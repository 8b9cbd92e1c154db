"""Writes the hand-made benchmark fixtures under fixtures/harness/<bench>/ that `llava score` is
tested against lmms-eval's own scoring code with:

- data.json: rows in lmms-eval's (Hugging Face) field names, images left out;
- data.tsv: the same rows as VLMEvalKit's TSV (a one-pixel PNG as base64 in `image`, shared rows
  pointing at the first row's index as VLMEvalKit stores them);
- data.parquet (MMStar, MMMU; with `datasets` installed): the rows as a Hugging Face dataset's
  parquet file, images embedded, as lmms-eval downloads them;
- pope/, mme/: VLMEvalKit's POPE.tsv and MME.tsv forms (data.tsv) with answers, scored by
  VLMEvalKit's `POPE_rating`/`MME_rating` (vlmevalkit.json, scripts/vlmevalkit_score.py);
- answers.jsonl: answers in LLaVA's format, written by hand to hit each rule's corners (letters
  in brackets, after "the answer is", at the start and the end, option texts, numbers with commas
  and exponents, full-width letters, articles and number words, "yes" inside other words, …);
- lmms_eval.json: what scripts/lmms_eval_score.py (lmms-eval 0.7.3) makes of them;
- hallusionbench/grades.jsonl: a judge's verdicts by hand, and lmms_eval_judged.json what
  lmms-eval's HallusionBench aggregation makes of them (`--grades`).

    python scripts/make_harness_fixtures.py            # rewrites the first three
    python scripts/lmms_eval_score.py --bench B --data fixtures/harness/B/data.json \
        --answers fixtures/harness/B/answers.jsonl > fixtures/harness/B/lmms_eval.json
"""

import base64
import csv
import io
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "harness")


def png(r, g, b):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = b"\x00" + bytes([r, g, b])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


IMAGE = base64.b64encode(png(200, 30, 30) * 1).decode()


def write(bench, rows, tsv_rows, answers):
    d = os.path.join(ROOT, bench)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "data.json"), "w") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
    header = list(tsv_rows[0].keys())
    with open(os.path.join(d, "data.tsv"), "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for i, r in enumerate(tsv_rows):
            r = dict(r)
            # VLMEvalKit stores a shared image once; later rows name the row that holds it.
            r["image"] = IMAGE if i == 0 else str(tsv_rows[0]["index"])
            w.writerow([r.get(k, "") for k in header])
    with open(os.path.join(d, "answers.jsonl"), "w") as f:
        for qid, text in answers:
            f.write(json.dumps({"question_id": qid, "prompt": "", "text": text, "answer_id": "", "model_id": "hand-made", "metadata": {}}, ensure_ascii=False) + "\n")


def letters(n):
    return [chr(ord("A") + i) for i in range(n)]


MCQ_FORMS = [
    "{g}",
    "({g})",
    "The answer is {g}.",
    "{o}",
    "{g}. {gt}",
    "I think {o} is tempting, but the answer is {g}",
    "",
    "none of these",
    "{gt}",
    "Answer: {o}",
    "{gl}",
    "Looking at the picture carefully, the best match here is {gt} without doubt",
    "Option ({o}) and option ({g})",
    "B",
    "**{g}**",
    "{g}\n\nExplanation: because {ot}.",
    "Ｂ",
    "It could be {o} or {g}",
]


def mcq_answer(k, gold, options):
    ls = letters(len(options))
    other = ls[(ls.index(gold) + 1) % len(ls)]
    form = MCQ_FORMS[k % len(MCQ_FORMS)]
    return form.format(g=gold, o=other, gt=options[ls.index(gold)], ot=options[ls.index(other)], gl=gold.lower())


def mmstar():
    cats = {
        "coarse perception": ["image scene and topic", "image style & quality", "image emotion"],
        "fine-grained perception": ["object counting", "recognition", "localization"],
        "instance reasoning": ["single-instance reasoning", "cross-instance attribute reasoning", "cross-instance relation reasoning"],
        "logical reasoning": ["code & sequence reasoning", "diagram reasoning", "common reasoning"],
        "science & technology": ["biology & chemistry & physics", "electronics & energy & mechanical eng.", "geography & earth science & agriculture"],
        "math": ["geometry", "numeric commonsense and calculation", "statistical reasoning"],
    }
    rows, tsv, answers = [], [], []
    k = 0
    for cat, l2s in cats.items():
        for j, l2 in enumerate(l2s):
            for n in range(2 + (j % 2)):
                options = [f"red {k}", f"green {k}", f"blue {k}", f"yellow {k}"]
                gold = "ABCD"[(k * 7) % 4]
                q = f"What colour is thing {k}?"
                opts = ", ".join(f"{l}: {o}" for l, o in zip("ABCD", options))
                rows.append({"index": k, "question": f"{q}\nOptions: {opts}", "answer": gold, "category": cat, "l2_category": l2, "meta_info": {}})
                tsv.append({"index": k, "question": q, "A": options[0], "B": options[1], "C": options[2], "D": options[3], "answer": gold, "category": cat, "image": ""})
                answers.append((k, mcq_answer(k, gold, options)))
                k += 1
    write("mmstar", rows, tsv, answers)


def mmmu():
    subjects = ["Art", "Art_Theory", "Accounting", "Economics", "Math", "Physics", "Biology", "Clinical_Medicine", "History", "Computer_Science", "Electronics", "Music"]
    open_forms = [
        ("4.5", "The total is 4.50 dollars."),
        ("1,200", "So the value is 1200"),
        ("Paris", "I think so: it is Paris"),
        ("12", "2x = 12"),
        ("rome", "rome is wrong, so madrid"),
        ("3.2e3", "the result is 3.2e3 units"),
        ("x", "The answer is x"),
        ("0.333", "therefore 0.33"),
        ("-7", "Final answer -7."),
        ("green", "It is GREEN.\nSo green"),
        ("42", "forty-two"),
        ("1/2", "The ratio is 1/2"),
    ]
    rows, tsv, answers = [], [], []
    k = 0
    for s, subject in enumerate(subjects):
        for n in range(3):
            rid = f"validation_{subject}_{n + 1}"
            if (s + n) % 3 == 2:
                gold, text = open_forms[(k // 3) % len(open_forms)]
                rows.append({"id": rid, "question": f"Open question {k} <image 1>", "options": "[]", "answer": gold, "question_type": "open", "subfield": subject, "img_type": "['Diagrams']"})
                tsv.append({"index": rid, "question": f"Open question {k} <image 1>", "A": "", "B": "", "C": "", "D": "", "answer": gold, "category": subject, "split": "validation", "image": ""})
                answers.append((rid, text))
            else:
                options = [f"{k} apples", f"{k} pears", f"it's {k} plums", f"{k} figs"][: 3 + (k % 2)]
                gold = letters(len(options))[(k * 5) % len(options)]
                rows.append({"id": rid, "question": f"Which fruit {k}? <image 1>", "options": repr(options), "answer": gold, "question_type": "multiple-choice", "subfield": subject, "img_type": "['Photos']"})
                cols = {l: o for l, o in zip("ABCD", options)}
                tsv.append({"index": rid, "question": f"Which fruit {k}? <image 1>", "A": cols.get("A", ""), "B": cols.get("B", ""), "C": cols.get("C", ""), "D": cols.get("D", ""), "answer": gold, "category": subject, "split": "validation", "image": ""})
                answers.append((rid, mcq_answer(k, gold, options)))
            k += 1
    write("mmmu", rows, tsv, answers)


def ocrbench():
    cats = [
        "Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition", "Handwriting Recognition",
        "Digit String Recognition", "Non-Semantic Text Recognition", "Scene Text-centric VQA", "Doc-oriented VQA",
        "Key Information Extraction", "Handwritten Mathematical Expression Recognition",
    ]
    cases = [
        (["STOP"], "The sign says stop."),
        (["Coffee"], "ＣＯＦＦＥＥ"),
        (["hello world"], "hello\nworld"),
        (["12345"], "1234"),
        (["a", "b"], "b"),
        (["New York"], "  new york  "),
    ]
    hme = [
        (["x ^ { 2 } + 1"], "x^{2}+1"),
        (["\\frac { a } { b }"], "\\frac{A}{b}"),
        (["y = 3"], "y =\n3"),
    ]
    rows, tsv, answers = [], [], []
    k = 0
    for c, cat in enumerate(cats):
        for n in range(3):
            answer, text = (hme if c == 9 else cases)[(k + n) % (3 if c == 9 else len(cases))]
            dataset = "HME100k" if c == 9 else "IIIT5K"
            rows.append({"index": k, "dataset": dataset, "question": f"what is written {k}?", "question_type": cat, "answer": answer})
            tsv.append({"index": k, "question": f"what is written {k}?", "answer": repr(answer), "category": cat, "image": ""})
            answers.append((k, text))
            k += 1
    write("ocrbench", rows, tsv, answers)


def ai2d():
    rows, tsv, answers = [], [], []
    for k in range(24):
        options = [f"stage {k}", f"phase {k}", f"layer {k}", f"part {k}"]
        gold = (k * 3) % 4
        g = "ABCD"[gold]
        rows.append({"question_id": k, "question": f"Which label {k}?", "options": options, "answer": str(gold)})
        tsv.append({"index": k, "question": f"Which label {k}?", "A": options[0], "B": options[1], "C": options[2], "D": options[3], "answer": g, "image": ""})
        answers.append((k, mcq_answer(k, g, options)))
    write("ai2d", rows, tsv, answers)


def textvqa():
    cases = [
        (["coca cola"] * 10, "Coca-Cola"),
        (["stop"] * 2 + ["go"] * 8, "STOP."),
        (["3"] * 10, "three"),
        (["the beatles"] * 6 + ["beatles"] * 4, "Beatles"),
        (["yes"] * 10, "Yes, it is"),
        (["10:30"] * 7 + ["1030"] * 3, "10:30"),
        (["don't walk"] * 5 + ["dont walk"] * 5, "dont walk"),
        (["a"] * 10, "A"),
        (["it's"] * 10, "its"),
        (["1,000"] * 10, "1000"),
    ]
    rows, tsv, answers = [], [], []
    for k in range(20):
        refs, text = cases[k % len(cases)]
        qid = 34602 + k
        rows.append({"question_id": qid, "question": f"what does sign {k} say?", "image_id": f"img{k}", "answers": refs, "ocr_tokens": ["sign", str(k)]})
        tsv.append({"index": qid, "question": f"what does sign {k} say?", "answer": repr(refs), "image": ""})
        answers.append((qid, text))
    write("textvqa", rows, tsv, answers)


def hallusionbench():
    rows, tsv, answers = [], [], []
    texts = ["Yes", "No", "yes.", "No, not at all", "Eyes say nothing", "I cannot tell", "YES", "Absolutely, yes"]
    k = 0
    for category, subcategory in [("VD", "illusion"), ("VD", "chart"), ("VS", "table"), ("VS", "map")]:
        for set_id in range(2):
            for figure_id in range(3 if category == "VD" else 2):
                for question_id in range(2):
                    gt = "1" if (set_id + figure_id + question_id) % 2 == 0 else "0"
                    row = {"category": category, "subcategory": subcategory, "visual_input": str(min(figure_id, 2)), "set_id": str(set_id), "figure_id": str(figure_id), "sample_note": "", "question_id": str(question_id), "question": f"Is thing {k} shown?", "gt_answer_details": "", "gt_answer": gt, "filename": f"{k}.png"}
                    rid = "_".join([category, subcategory, str(set_id), str(figure_id), str(question_id)])
                    rows.append(row)
                    tsv.append({"index": f"{category}_{subcategory}_x_{set_id}_{figure_id}_{question_id}", "question": row["question"], "answer": "Yes" if gt == "1" else "No", "category": category, "l2-category": subcategory, "image": ""})
                    answers.append((rid, texts[(k * 3) % len(texts)]))
                    k += 1
    write("hallusionbench", rows, tsv, answers)
    # A judge's verdicts (0 incorrect, 1 correct, 2 unclear), by hand.
    with open(os.path.join(ROOT, "hallusionbench", "grades.jsonl"), "w") as f:
        for i, (rid, _) in enumerate(answers):
            f.write(json.dumps({"question_id": rid, "correctness": [1, 0, 2, 1, 1, 2, 0][i % 7], "content": "by hand"}) + "\n")


def yes_no_tsv(bench, rows, answers):
    """A VLMEvalKit TSV of yes/no rows (POPE.tsv, MME.tsv) with its answers."""
    d = os.path.join(ROOT, bench)
    os.makedirs(d, exist_ok=True)
    header = list(rows[0].keys()) + ["image"]
    with open(os.path.join(d, "data.tsv"), "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for i, r in enumerate(rows):
            w.writerow([r[k] for k in header[:-1]] + [IMAGE if i == 0 else str(rows[0]["index"])])
    with open(os.path.join(d, "answers.jsonl"), "w") as f:
        for r, text in zip(rows, answers):
            f.write(json.dumps({"question_id": r["index"], "prompt": "", "text": text, "answer_id": "", "model_id": "hand-made", "metadata": {}}) + "\n")


YES_NO_ANSWERS = ["Yes", "No", "no.", "Yes, there is.", "There is not a dog.", "I think yes", "Nope", "yes and no", "", "YES", "No, it is not", "Yes."]


def pope_tsv():
    cats = ["adversarial", "popular", "random", "adversarial,popular", "popular,random", "adversarial,popular,random"]
    rows, answers = [], []
    for k in range(30):
        gt = "Yes" if (k * 7) % 3 == 0 else "No"
        rows.append({"index": k, "question": f"Is there a thing {k} in the image?", "answer": gt, "category": cats[k % len(cats)]})
        answers.append(YES_NO_ANSWERS[(k * 5) % len(YES_NO_ANSWERS)])
    yes_no_tsv("pope", rows, answers)


def mme_tsv():
    subtasks = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
                "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]
    rows, answers = [], []
    k = 0
    for s in subtasks:
        for image in range(2):
            for q in range(2):
                gt = "Yes" if q == 0 else "No"
                rows.append({"index": k, "question": f"Is thing {k} shown? Please answer yes or no.", "answer": gt, "category": s, "image_path": f"{s}/{image}.jpg"})
                answers.append(YES_NO_ANSWERS[(k * 7 + image) % len(YES_NO_ANSWERS)])
                k += 1
    yes_no_tsv("mme", rows, answers)


def parquet_copies():
    """MMStar's and MMMU's rows as a Hugging Face dataset's parquet file (what lmms-eval
    downloads): images as `datasets.Image` structs of PNG bytes, MMMU's in image_1 and image_2."""
    import datasets

    for bench, columns in (("mmstar", ["image"]), ("mmmu", ["image_1", "image_2"])):
        with open(os.path.join(ROOT, bench, "data.json")) as f:
            rows = json.load(f)
        for i, r in enumerate(rows):
            r.pop("meta_info", None)
            for k, c in enumerate(columns):
                r[c] = {"bytes": png(10 * i % 256, 40 * k, 200), "path": None}
        features = datasets.Dataset.from_list(rows[:1]).features
        for c in columns:
            features[c] = datasets.Image()
        ds = datasets.Dataset.from_list(rows, features=features)
        ds.to_parquet(os.path.join(ROOT, bench, "data.parquet"))


if __name__ == "__main__":
    for make in (mmstar, mmmu, ocrbench, ai2d, textvqa, hallusionbench, pope_tsv, mme_tsv):
        make()
    try:
        parquet_copies()
    except ImportError:
        print("datasets is not installed: data.parquet files left as they are")
