//! The paper's Table 1 row from the benchmarks' scores, as JSON and as Markdown.

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
    fn the_markdown_row_rounds_each_column_as_the_paper_does() {
        let row = json!({"GQA": 0.5, "MME cog": 250.4, "MM-Vet": 30.04, "POPE acc": null});
        let text = markdown_row(&row);
        let last = text.lines().last().unwrap();
        assert_eq!(last, "| 0.500 | 250 |  | 30.0 |  |  |  |  |  |");
    }
}
