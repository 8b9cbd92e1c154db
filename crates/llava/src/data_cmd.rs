//! `llava data check` and `llava data show`: auditing a dataset and its loss mask.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use data::{Dataset, ImageSource, Template, Templater};
use gemma_lm::GemmaTokenizer;
use vision_encoders::processing::{ImageProcessor, ProcessorConfig};

use crate::{Error, Result};

/// How to open a dataset for checking or showing.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// The JSON list of records.
    pub data: PathBuf,
    /// Image folder or zip.
    pub images: Option<PathBuf>,
    /// `gemma` or `plain`.
    pub template: String,
    /// A Gemma directory or tokenizer.json; the built-in tiny tokenizer when `None`.
    pub tokenizer: Option<PathBuf>,
    /// Tokens per image (576 for CLIP-L/336).
    pub tokens_per_image: usize,
    /// Longest sample.
    pub max_length: usize,
}

/// Opens the dataset described by `options`.
pub fn open(options: &DataOptions) -> Result<Dataset> {
    let template = Template::parse(&options.template).ok_or_else(|| {
        Error::Unsupported(format!(
            "unknown template `{}` (gemma, plain)",
            options.template
        ))
    })?;
    let mut tokenizer = match &options.tokenizer {
        Some(path) => GemmaTokenizer::from_file(path)?,
        None => data::builtin_tokenizer(),
    };
    let image_token = tokenizer.add_special_token(data::template::IMAGE_MARK);
    let (records, bad_records) = data::RecordFile::open(&options.data)?;
    let images = options
        .images
        .as_deref()
        .map(ImageSource::open)
        .transpose()?;
    Ok(Dataset {
        records,
        bad_records,
        images,
        templater: Templater {
            tokenizer,
            template,
            image_token,
            tokens_per_image: options.tokens_per_image,
            max_length: options.max_length,
        },
        processor: ImageProcessor::new(ProcessorConfig::clip_336()),
    })
}

/// A readable summary of a check report.
pub fn summary(report: &data::CheckReport, data: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", data.display());
    let _ = writeln!(
        out,
        "  records {}, usable {} ({} text-only), bad {}",
        report.records, report.ok, report.text_only, report.bad
    );
    for (reason, count) in &report.reasons {
        let _ = writeln!(out, "    {reason}: {count}");
    }
    for b in report.bad_samples.iter().take(10) {
        let id = b.id.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "    #{} {id}: {} ({})", b.index, b.reason, b.detail);
    }
    if report.bad_samples.len() > 10 {
        let _ = writeln!(
            out,
            "    … {} more (--json lists them all)",
            report.bad_samples.len() - 10
        );
    }
    let t = &report.tokens;
    let _ = writeln!(
        out,
        "  tokens per sample: min {}, mean {:.1}, median {}, p95 {}, max {}; truncated {}",
        t.min, t.mean, t.p50, t.p95, t.max, t.truncated
    );
    out
}

/// One sample as the model sees it: each token with its label, image tokens collapsed.
pub fn show(dataset: &Dataset, index: usize) -> Result<String> {
    if index >= dataset.records.len() {
        return Err(Error::Unsupported(format!(
            "no usable record {index} (there are {})",
            dataset.records.len()
        )));
    }
    let record = dataset.records.get(index).map_err(|bad| {
        Error::Unsupported(format!(
            "record #{}: {}: {}",
            bad.index, bad.reason, bad.detail
        ))
    })?;
    let tokens = dataset
        .templater
        .tokenize(&record)
        .map_err(|(reason, detail)| {
            Error::Unsupported(format!("record {}: {reason}: {detail}", record.id))
        })?;
    let tokenizer = &dataset.templater.tokenizer;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "record {} (id {}), image {:?}",
        index, record.id, record.image
    );
    let _ = writeln!(out, "{:>5}  {:>7}  {:<24} label", "pos", "id", "token");
    let mut pos = 0;
    while pos < tokens.input_ids.len() {
        let id = tokens.input_ids[pos];
        if id == dataset.templater.image_token {
            let run = tokens.input_ids[pos..]
                .iter()
                .take_while(|&&t| t == id)
                .count();
            let _ = writeln!(
                out,
                "{pos:>5}  {id:>7}  {:<24} -100",
                format!("<image> x{run}")
            );
            pos += run;
            continue;
        }
        let text = tokenizer.decode(&[id], false)?;
        let label = tokens.labels[pos];
        let shown = if label == data::IGNORE {
            "-100".to_string()
        } else {
            format!("{label} (learn)")
        };
        let _ = writeln!(
            out,
            "{pos:>5}  {id:>7}  {:<24} {shown}",
            format!("{text:?}")
        );
        pos += 1;
    }
    let learned = tokens.labels.iter().filter(|&&l| l != data::IGNORE).count();
    let _ = writeln!(
        out,
        "{} tokens, {learned} with loss{}",
        tokens.input_ids.len(),
        if tokens.truncated { ", truncated" } else { "" }
    );
    Ok(out)
}
