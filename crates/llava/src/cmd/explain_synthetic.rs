//! `llava explain-synthetic`: where the explanations of a demo model's answers look. For each
//! held-out synthetic question about one shape (the data knows its box), the answer's relevancy
//! map (and raw attention) over the image: the share of it inside the shape's box, against the
//! box's share of the image.

use std::path::PathBuf;
use std::process::ExitCode;

use llava::chat::{ChatOptions, ImageChat};
use llava::gemma_lm::{GenerationConfig, Message};
use serde_json::{Value, json};
use tch::{Kind, Tensor};

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// LLaVA model directory (stage 2's `model/`).
    #[arg(long)]
    model: PathBuf,
    /// The synthetic dataset folder (eval_questions.jsonl with boxes, images/).
    #[arg(long)]
    data: PathBuf,
    /// At most this many questions (in file order).
    #[arg(long)]
    limit: Option<usize>,
    /// Where to write the report (prints it either way).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Runs it.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    let file = args.data.join("eval_questions.jsonl");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| llava::Error::Unsupported(format!("{}: {e}", file.display())))?;
    let config = GenerationConfig {
        max_new_tokens: 12,
        temperature: Some(0.0),
        ..GenerationConfig::default()
    };
    let mut rows: Vec<(String, [f64; 2], f64)> = Vec::new(); // kind, inside (relevancy, attention), area
    let mut chat: Option<ImageChat> = None; // loaded once, with the first question's image
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if args.limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let q: Value = serde_json::from_str(line)
            .map_err(|e| llava::Error::Unsupported(format!("{}: {e}", file.display())))?;
        let Some(bounds) = q["box"].as_array().filter(|b| b.len() == 4) else {
            continue;
        };
        let bounds: Vec<f64> = bounds.iter().filter_map(Value::as_f64).collect();
        let image = [args
            .data
            .join("images")
            .join(q["image"].as_str().unwrap_or_default())];
        let chat = match &mut chat {
            Some(chat) => {
                chat.show(&image)?;
                chat
            }
            None => chat.insert(ImageChat::open(
                &args.model,
                &image,
                tch::Device::Cpu,
                Kind::Float,
                &ChatOptions::default(),
            )?),
        };
        let question = q["text"].as_str().unwrap_or_default();
        let (_, explained) = chat.explain(&[Message::user(question)], &config)?;
        let image_token = chat.model().image_token();
        let stops = chat.tokenizer().chat_stop_tokens();
        let kept: Vec<i64> = (0..explained.answer.len() as i64)
            .filter(|&i| !stops.contains(&explained.answer[i as usize]))
            .collect();
        if kept.is_empty() {
            continue;
        }
        let kept = Tensor::from_slice(&kept);
        let attention = explained
            .attention
            .mean_dim([1, 2].as_slice(), false, Kind::Float);
        let mut inside = [0.0; 2];
        let mut area = 0.0;
        for (k, values) in [&explained.relevancy, &attention].into_iter().enumerate() {
            let maps = explained.image_maps(values, image_token)?;
            let grid = maps[0]
                .index_select(0, &kept)
                .mean_dim(0, false, Kind::Float);
            let weights = coverage(grid.size()[0], &bounds);
            let total = grid.sum(Kind::Double).double_value(&[]);
            let within = (&grid * &weights).sum(Kind::Double).double_value(&[]);
            inside[k] = if total > 0.0 { within / total } else { 0.0 };
            area = weights.mean(Kind::Double).double_value(&[]);
        }
        rows.push((
            q["category"].as_str().unwrap_or("").to_string(),
            inside,
            area,
        ));
    }
    let summary = |rows: &[&(String, [f64; 2], f64)]| {
        let n = rows.len().max(1) as f64;
        let area = rows.iter().map(|r| r.2).sum::<f64>() / n;
        let mut out = json!({"questions": rows.len(), "box_share_of_image": area});
        for (k, name) in ["relevancy", "attention"].iter().enumerate() {
            let inside = rows.iter().map(|r| r.1[k]).sum::<f64>() / n;
            let above = rows.iter().filter(|r| r.1[k] > r.2).count() as f64 / n;
            out[*name] = json!({
                "share_inside_box": inside,
                "ratio_to_box_share": inside / area.max(1e-12),
                "questions_above_box_share": above,
            });
        }
        out
    };
    let all: Vec<_> = rows.iter().collect();
    let mut by_kind = serde_json::Map::new();
    let mut kinds: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let these: Vec<_> = rows.iter().filter(|r| r.0 == kind).collect();
        by_kind.insert(kind.to_string(), summary(&these));
    }
    let mut report = summary(&all);
    report["by_kind"] = Value::Object(by_kind);
    report["model"] = json!(args.model.display().to_string());
    let text = serde_json::to_string_pretty(&report).expect("serialises");
    println!("{text}");
    if let Some(path) = &args.report {
        llava::foundation::write_atomic(path, text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How much of each cell of a `side x side` grid over the image lies inside `bounds`
/// `[x0, y0, x1, y1]` (fractions of the side), `[side, side]` (row-major: rows are y).
fn coverage(side: i64, bounds: &[f64]) -> Tensor {
    let overlap = |lo: f64, hi: f64, a: f64, b: f64| ((hi.min(b) - lo.max(a)) / (hi - lo)).max(0.0);
    let s = side as f64;
    let values: Vec<f32> = (0..side * side)
        .map(|i| {
            let (r, c) = ((i / side) as f64, (i % side) as f64);
            let x = overlap(c / s, (c + 1.0) / s, bounds[0], bounds[2]);
            let y = overlap(r / s, (r + 1.0) / s, bounds[1], bounds[3]);
            (x * y) as f32
        })
        .collect();
    Tensor::from_slice(&values).view([side, side])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_covers_the_cells_it_overlaps_in_proportion() {
        // The middle third of a 3 x 3 grid, and half of the cell to its right.
        let c = coverage(3, &[1.0 / 3.0, 1.0 / 3.0, 5.0 / 6.0, 2.0 / 3.0]);
        let v = Vec::<f32>::try_from(c.flatten(0, -1)).unwrap();
        let want = [0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
    }
}
