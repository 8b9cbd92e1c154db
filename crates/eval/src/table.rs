//! The paper's Table 1 row from the benchmarks' scores, and the row of the benchmarks compact
//! models are compared on today, as JSON and as Markdown.

use serde_json::{Value, json};

/// The paper's Table 1 columns from the scores (`null` where a benchmark was not scored). POPE's
/// accuracy and F1 average its three categories.
pub fn table_row(scores: &serde_json::Map<String, Value>) -> Value {
    let get =
        |bench: &str, pointer: &str| scores.get(bench).and_then(|v| v.pointer(pointer)).cloned();
    let pope = |metric: &str| {
        // `llava score --bench pope` puts each category at the top level, next to `issues`.
        let pope = scores.get("pope")?;
        let values: Vec<f64> = ["adversarial", "popular", "random"]
            .iter()
            .filter_map(|c| pope.get(*c)?.get(metric)?.as_f64())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    json!({
        "GQA": get("gqa", "/accuracy"),
        "MME cog": get("mme", "/cognition"),
        "MME perc": get("mme", "/perception"),
        "MM-Vet": get("mmvet", "/total"),
        "POPE acc": pope("accuracy"),
        "POPE F1": pope("f1"),
        "VQAv2": get("vqav2", "/accuracy"),
        "MMVP": get("mmvp", "/pair_accuracy"),
        "SQA-IMG": get("sqa", "/img_accuracy").and_then(|v| v.as_f64()).map(|v| json!(v / 100.0)),
        "synthetic": get("synthetic", "/accuracy"),
    })
}

/// The recent benchmarks' row (`null` where one was not scored): each headline metric in the
/// unit its leaderboards print (percent; OCRBench out of 1000), with its 95 % interval.
pub fn recent_row(scores: &serde_json::Map<String, Value>) -> Value {
    let row: serde_json::Map<String, Value> = RECENT_COLUMNS
        .iter()
        .map(|(column, bench, name)| {
            let m = scores
                .get(*bench)
                .and_then(|v| v.pointer(&format!("/metrics/{name}")))
                .cloned()
                .unwrap_or(Value::Null);
            (column.to_string(), m)
        })
        .collect();
    Value::Object(row)
}

/// The recent row's columns: (column, benchmark, metric).
pub const RECENT_COLUMNS: [(&str, &str, &str); 9] = [
    ("MMStar", "mmstar", "overall"),
    ("MMMU val", "mmmu", "accuracy"),
    ("OCRBench", "ocrbench", "final_score"),
    ("AI2D", "ai2d", "accuracy"),
    ("TextVQA", "textvqa", "accuracy"),
    ("TextVQA+OCR", "textvqa-ocr", "accuracy"),
    ("HallB aAcc", "hallusionbench", "aAcc"),
    ("HallB qAcc", "hallusionbench", "qAcc"),
    ("HallB fAcc", "hallusionbench", "fAcc"),
];

/// The recent row as a Markdown table: percentages with one decimal (OCRBench as is) and each
/// interval in brackets.
pub fn markdown_recent_row(row: &Value) -> String {
    let cols: Vec<&str> = RECENT_COLUMNS.iter().map(|c| c.0).collect();
    let cell = |c: &str| -> String {
        let Some(m) = row.get(c).filter(|m| !m.is_null()) else {
            return String::new();
        };
        let scale = if c.starts_with("HallB") || c == "OCRBench" {
            1.0
        } else {
            100.0
        };
        let v = |p: &str| m.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN) * scale;
        let digits = usize::from(c != "OCRBench");
        format!(
            "{:.*} [{:.*}, {:.*}]",
            digits,
            v("/value"),
            digits,
            v("/interval/0"),
            digits,
            v("/interval/1")
        )
    };
    format!(
        "| {} |\n|{}|\n| {} |",
        cols.join(" | "),
        cols.iter().map(|_| " --- ").collect::<Vec<_>>().join("|"),
        cols.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
    )
}

/// The row as a Markdown table (header and one line).
pub fn markdown_row(row: &Value) -> String {
    let cols = [
        "GQA", "MME cog", "MME perc", "MM-Vet", "POPE acc", "POPE F1", "VQAv2", "MMVP", "SQA-IMG",
    ];
    let cell = |c: &str| match row.get(c).and_then(Value::as_f64) {
        None => String::new(),
        Some(v) if c.starts_with("MME") => format!("{v:.0}"),
        Some(v) if c == "MM-Vet" || c == "VQAv2" => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    };
    format!(
        "| {} |\n|{}|\n| {} |",
        cols.join(" | "),
        cols.iter().map(|_| " --- ").collect::<Vec<_>>().join("|"),
        cols.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_row_averages_popes_three_categories() {
        let scores = json!({
            "pope": {
                "adversarial": {"accuracy": 0.8, "f1": 0.7},
                "popular": {"accuracy": 0.9, "f1": 0.8},
                "random": {"accuracy": 1.0, "f1": 0.9},
                "issues": {}
            },
            "gqa": {"accuracy": 0.5}
        });
        let row = table_row(scores.as_object().unwrap());
        assert!(
            (row["POPE acc"].as_f64().unwrap() - 0.9).abs() < 1e-12,
            "{row}"
        );
        assert!(
            (row["POPE F1"].as_f64().unwrap() - 0.8).abs() < 1e-12,
            "{row}"
        );
        assert_eq!(row["GQA"], json!(0.5));
        assert!(row["MMVP"].is_null());
    }

    #[test]
    fn the_recent_row_prints_percentages_with_intervals() {
        let mut scores = serde_json::Map::new();
        scores.insert(
            "mmstar".into(),
            json!({"metrics": {"overall": {"value": 0.4, "interval": [0.375, 0.4251], "units": 1500}}}),
        );
        scores.insert(
            "ocrbench".into(),
            json!({"metrics": {"final_score": {"value": 512.0, "interval": [481.0, 543.0], "units": 1000}}}),
        );
        let row = recent_row(&scores);
        assert!(row["MMMU val"].is_null());
        let md = markdown_recent_row(&row);
        assert!(md.contains("40.0 [37.5, 42.5]"), "{md}");
        assert!(md.contains("512 [481, 543]"), "{md}");
    }

    #[test]
    fn the_markdown_row_rounds_each_column_as_the_paper_does() {
        let row = json!({"GQA": 0.5, "MME cog": 250.4, "MM-Vet": 30.04, "POPE acc": null});
        let text = markdown_row(&row);
        let last = text.lines().last().unwrap();
        assert_eq!(last, "| 0.500 | 250 |  | 30.0 |  |  |  |  |  |");
    }
}
