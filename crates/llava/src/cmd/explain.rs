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
    let chat = args.source.open()?;
    let config = llava::gemma_lm::GenerationConfig {
        temperature: Some(0.0),
        ..args.source.sampling.config()
    };
    let start = std::time::Instant::now();
    let (answer, explained) = chat.explain(&[Message::user(args.prompt.as_str())], &config)?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{answer}");
    std::fs::create_dir_all(&args.output).map_err(|e| io(&args.output, e))?;
    let image_token = chat.model().image_token();
    let relevancy_maps = explained.image_maps(&explained.relevancy, image_token)?;
    let Some(map) = relevancy_maps.first() else {
        return Err(llava::Error::Unsupported(
            "the prompt holds no image tokens to explain".into(),
        ));
    };
    // Raw attention averaged over heads (per layer) and over layers too.
    let per_layer = explained.attention.mean_dim(2, false, Kind::Float); // [answer, layers, len]
    let attention = per_layer.mean_dim(1, false, Kind::Float);
    let attention_map = explained.image_maps(&attention, image_token)?.remove(0);
    let tokenizer = chat.tokenizer();
    let texts: Vec<String> = explained
        .answer
        .iter()
        .map(|&t| tokenizer.decode(&[t], false).unwrap_or_default())
        .collect();
    let shares = explained.image_share(image_token);
    let words = words(&texts, &explained.answer, |t| {
        tokenizer.chat_stop_tokens().contains(&t) || t == tokenizer.eos
    });

    let view = chat.view(0);
    let mut sheet = Vec::new();
    let mut json_words = Vec::new();
    for (w, (text, tokens)) in words.iter().enumerate() {
        let index = Tensor::from_slice(&tokens.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let grid = map.index_select(0, &index).mean_dim(0, false, Kind::Float);
        let overlay = overlay(&view, &grid);
        let file = format!("word-{w:02}.png");
        save_png(&overlay, &args.output.join(&file))?;
        sheet.push(overlay);
        json_words.push(json!({
            "text": text,
            "tokens": tokens,
            "image_share": tokens.iter().map(|&i| shares[i]).sum::<f64>() / tokens.len() as f64,
            "relevancy": grid_json(&grid),
            "png": file,
        }));
    }
    if !sheet.is_empty() {
        save_png(&contact_sheet(&sheet), &args.output.join("sheet.png"))?;
    }
    let prompt_len = explained.sequence.len() - explained.answer.len() + 1;
    let prompt_texts: Vec<String> = explained.sequence[..prompt_len]
        .iter()
        .map(|&t| tokenizer.decode(&[t], false).unwrap_or_default())
        .collect();
    let tokens: Vec<Value> = (0..explained.answer.len())
        .map(|i| {
            let row = explained.relevancy.get(i as i64);
            let text_relevancy: Vec<Value> = prompt_texts
                .iter()
                .enumerate()
                .filter(|(p, _)| explained.sequence[*p] != image_token)
                .map(|(p, t)| json!([t, row.double_value(&[p as i64])]))
                .collect();
            json!({
                "id": explained.answer[i],
                "text": texts[i],
                "image_share": shares[i],
                "relevancy": grid_json(&map.get(i as i64)),
                "attention": grid_json(&attention_map.get(i as i64)),
                "prompt_relevancy": text_relevancy,
            })
        })
        .collect();
    let side = map.size()[1];
    let report = json!({
        "question": args.prompt,
        "answer": answer,
        "grid": [side, side],
        "layers": explained.attention.size()[1],
        "heads": explained.attention.size()[2],
        "seconds": seconds,
        "tokens": tokens,
        "words": json_words,
        "maps": "maps.safetensors",
    });
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

/// The answer's words: runs of tokens, a new word starting at a token whose text starts with
/// whitespace (SentencePiece's `▁` decodes to a space); special tokens (`skip`) are left out.
/// Returns each word's text and its token indices.
fn words(texts: &[String], ids: &[i64], skip: impl Fn(i64) -> bool) -> Vec<(String, Vec<usize>)> {
    let mut words: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        if skip(ids[i]) || text.trim().is_empty() {
            continue;
        }
        let starts = text.starts_with(char::is_whitespace) || words.is_empty();
        match words.last_mut() {
            Some((word, tokens)) if !starts && tokens.last() == Some(&(i - 1)) => {
                word.push_str(text);
                tokens.push(i);
            }
            _ => words.push((text.trim().to_string(), vec![i])),
        }
    }
    words
}

fn grid_json(grid: &Tensor) -> Value {
    let side = grid.size()[0];
    let rows: Vec<Vec<f64>> = (0..side)
        .map(|r| {
            Vec::<f32>::try_from(grid.get(r).to_kind(Kind::Float))
                .unwrap_or_default()
                .into_iter()
                .map(f64::from)
                .collect()
        })
        .collect();
    json!(rows)
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
    fn words_join_tokens_until_the_next_space() {
        let texts: Vec<String> = ["a", " red", " cir", "cle", ".", "<end_of_turn>"]
            .map(String::from)
            .to_vec();
        let ids = [1, 2, 3, 4, 5, 106];
        let words = words(&texts, &ids, |t| t == 106);
        assert_eq!(
            words,
            vec![
                ("a".to_string(), vec![0]),
                ("red".to_string(), vec![1]),
                ("circle.".to_string(), vec![2, 3, 4]),
            ]
        );
    }

    #[test]
    fn the_colour_scale_runs_from_dark_blue_to_red() {
        assert_eq!(colour(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(colour(1.0), [0.9, 0.0, 0.0]);
    }
}
