//! `llava explain`: what an answer looked at. Answers a question about an image greedily, then
//! writes, for each answer token and word, its relevancy map over the image (and over the
//! prompt's words) and its raw attention to the image (`llava_model::explain`), as JSON, a
//! safetensors file of the full maps, and PNG overlays on the image as the model saw it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use image::{Rgb, RgbImage};
use llava::gemma_lm::Message;
use serde_json::{Value, json};
use tch::{Kind, Tensor};

use super::ImageModel;

/// Its arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: ImageModel,
    /// The question.
    #[arg(long)]
    prompt: String,
    /// Where to write `explanation.json`, `maps.safetensors`, one `word-NN.png` per word and
    /// `sheet.png`.
    #[arg(long)]
    output: PathBuf,
}

/// Runs `llava explain`.
pub fn run(args: &Args) -> llava::Result<ExitCode> {
    if args.source.quantize.is_some() {
        // Relevancy differentiates through the linear layers; the quantized kernels cannot.
        return Err(llava::Error::Unsupported(
            "explain needs the model's dense weights: leave out --quantize".into(),
        ));
    }
    let chat = args.source.open()?;
    if let Some(how) = chat.model().quantization() {
        return Err(llava::Error::Unsupported(format!(
            "explain needs the model's dense weights: {} holds {how} codes (from `llava \
             quantize`)",
            args.source.model.display()
        )));
    }
    let config = llava::gemma_lm::GenerationConfig {
        temperature: Some(0.0),
        ..args.source.sampling.config()
    };
    let start = std::time::Instant::now();
    let (answer, explained) = chat.explain(&[Message::user(args.prompt.as_str())], &config)?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{answer}");
    std::fs::create_dir_all(&args.output).map_err(|e| io(&args.output, e))?;
    let tokenizer = chat.tokenizer();
    let mut report = explained.report(tokenizer, chat.model().image_token())?;
    // One overlay per word, on the first image as the model saw it.
    let view = chat.view(0);
    let mut sheet = Vec::new();
    if let Some(words) = report["words"].as_array_mut() {
        for (w, word) in words.iter_mut().enumerate() {
            let Some(grid) = grid_tensor(&word["relevancy"][0]) else {
                continue;
            };
            let overlay = overlay(&view, &grid);
            let file = format!("word-{w:02}.png");
            save_png(&overlay, &args.output.join(&file))?;
            sheet.push(overlay);
            word["png"] = json!(file);
        }
    }
    if !sheet.is_empty() {
        save_png(&contact_sheet(&sheet), &args.output.join("sheet.png"))?;
    }
    report["question"] = json!(args.prompt);
    report["answer"] = json!(answer);
    report["seconds"] = json!(seconds);
    report["maps"] = json!("maps.safetensors");
    let text = serde_json::to_string_pretty(&report).expect("serialises");
    llava::foundation::write_atomic(args.output.join("explanation.json"), text.as_bytes())?;
    let sequence = Tensor::from_slice(&explained.sequence);
    llava::foundation::save_safetensors(
        args.output.join("maps.safetensors"),
        &[
            ("relevancy".to_string(), explained.relevancy.shallow_clone()),
            ("attention".to_string(), explained.attention.shallow_clone()),
            ("sequence".to_string(), sequence),
        ],
        None,
    )?;
    eprintln!(
        "explained {} tokens in {seconds:.2}s; wrote {}",
        explained.answer.len(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn io(path: &Path, e: std::io::Error) -> llava::Error {
    llava::Error::Unsupported(format!("{}: {e}", path.display()))
}

/// A grid of the report (rows of numbers) as a `[side, side]` tensor.
fn grid_tensor(grid: &Value) -> Option<Tensor> {
    let rows = grid.as_array()?;
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.as_array().into_iter().flatten())
        .filter_map(|v| v.as_f64().map(|v| v as f32))
        .collect();
    let side = rows.len() as i64;
    (side > 0 && values.len() as i64 == side * side)
        .then(|| Tensor::from_slice(&values).view([side, side]))
}

/// The colour of `v` in [0, 1] on a blue-cyan-yellow-red scale.
fn colour(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let stops = [
        [0.0, 0.0, 0.5],
        [0.0, 0.6, 1.0],
        [1.0, 0.9, 0.0],
        [0.9, 0.0, 0.0],
    ];
    let x = v * (stops.len() - 1) as f32;
    let i = (x.floor() as usize).min(stops.len() - 2);
    let f = x - i as f32;
    std::array::from_fn(|c| stops[i][c] * (1.0 - f) + stops[i + 1][c] * f)
}

/// `grid` (min-max normalised, bilinearly enlarged) over `view`, enlarged to at least 224 px.
fn overlay(view: &RgbImage, grid: &Tensor) -> RgbImage {
    let scale = (224 / view.width().max(1)).max(1);
    let (w, h) = (view.width() * scale, view.height() * scale);
    let base = image::imageops::resize(view, w, h, image::imageops::FilterType::Nearest);
    let (lo, hi) = (grid.min().double_value(&[]), grid.max().double_value(&[]));
    let norm = (grid - lo) / (hi - lo).max(1e-12);
    let side = grid.size()[0] as u32;
    let values = Vec::<f32>::try_from(norm.to_kind(Kind::Float).flatten(0, -1)).unwrap_or_default();
    let small = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(side, side, values)
        .expect("side x side values");
    let big = image::imageops::resize(&small, w, h, image::imageops::FilterType::Triangle);
    RgbImage::from_fn(w, h, |x, y| {
        let heat = colour(big.get_pixel(x, y)[0]);
        let p = base.get_pixel(x, y);
        Rgb(std::array::from_fn(|c| {
            (0.5 * p[c] as f32 + 0.5 * 255.0 * heat[c]).round() as u8
        }))
    })
}

/// The overlays side by side in rows of four, with the colour scale (low to high) below.
fn contact_sheet(tiles: &[RgbImage]) -> RgbImage {
    let (tw, th) = (tiles[0].width(), tiles[0].height());
    let columns = tiles.len().min(4) as u32;
    let rows = tiles.len().div_ceil(4) as u32;
    let (w, h) = (columns * tw, rows * th + 24);
    let mut sheet = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y) = ((i as u32 % 4) * tw, (i as u32 / 4) * th);
        image::imageops::overlay(&mut sheet, tile, x as i64, y as i64);
    }
    for x in 0..w {
        let c = colour(x as f32 / (w - 1).max(1) as f32);
        for y in rows * th + 6..h - 4 {
            sheet.put_pixel(x, y, Rgb(c.map(|v| (v * 255.0).round() as u8)));
        }
    }
    sheet
}

fn save_png(image: &RgbImage, path: &Path) -> llava::Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| llava::Error::Unsupported(format!("{}: {e}", path.display())))?;
    llava::foundation::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_colour_scale_runs_from_dark_blue_to_red() {
        assert_eq!(colour(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(colour(1.0), [0.9, 0.0, 0.0]);
    }
}
