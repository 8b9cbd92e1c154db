//! `llava data`: check a dataset, show a sample, write a mix-like file.

use std::path::PathBuf;
use std::process::ExitCode;

use llava::data::{Dataset, ImageSource, RecordFile, Template, Templater};
use llava::gemma_lm::GemmaTokenizer;
use llava::vision_encoders::processing::{ImageProcessor, ProcessorConfig};

/// Its subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Args {
    /// Check every record, image and sample length; report what is unusable and why.
    Check {
        #[command(flatten)]
        data: DataArgs,
        /// Print one JSON object (records, ok, bad, text_only, bad_ids, reasons, bad_samples, tokens).
        #[arg(long)]
        json: bool,
        /// Only look images up; do not decode them.
        #[arg(long)]
        no_decode: bool,
    },
    /// Print one sample as the model sees it: each token with its label.
    Show {
        #[command(flatten)]
        data: DataArgs,
        /// Which usable record (0-based).
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Which record, by id (instead of --index).
        #[arg(long)]
        id: Option<String>,
    },
    /// Write a file shaped like llava_v1_5_mix665k.json (its sources, turn counts and lengths),
    /// for scale tests and benchmarks: 665,000 records are about 0.9 GB.
    MixLike {
        /// Where to write the JSON list.
        #[arg(long)]
        output: PathBuf,
        /// How many records.
        #[arg(long, default_value_t = 665_000)]
        records: usize,
        /// Seed of the draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// The dataset to open, and how to tokenize it.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// The JSON list of records (chat.json, blip_laion_cc_sbu_558k.json, llava_v1_5_mix665k.json).
    #[arg(long)]
    data: PathBuf,
    /// Image folder or zip (images.zip is read in place).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Conversation template: gemma or plain.
    #[arg(long, default_value = "gemma")]
    template: String,
    /// Gemma directory or tokenizer.json (default: the built-in tiny tokenizer).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Tokens one image becomes (576 for CLIP ViT-L/14-336).
    #[arg(long, default_value_t = 576)]
    tokens_per_image: usize,
    /// Longest sample in tokens.
    #[arg(long, default_value_t = 2048)]
    max_length: usize,
}

impl DataArgs {
    /// Opens the dataset: its records, its images, and the template with the tokenizer (the
    /// built-in tiny one by default) and CLIP-336's image processing.
    fn open(&self) -> llava::Result<Dataset> {
        let template = Template::parse(&self.template).ok_or_else(|| {
            llava::Error::Unsupported(format!(
                "unknown template `{}` (gemma, plain)",
                self.template
            ))
        })?;
        let mut tokenizer = match &self.tokenizer {
            Some(path) => GemmaTokenizer::from_file(path)?,
            None => llava::data::builtin_tokenizer(),
        };
        let image_token = tokenizer.add_special_token(llava::data::template::IMAGE_MARK);
        let (records, bad_records) = RecordFile::open(&self.data)?;
        let images = self.images.as_deref().map(ImageSource::open).transpose()?;
        Ok(Dataset {
            records,
            bad_records,
            images,
            templater: Templater {
                tokenizer,
                template,
                image_token,
                tokens_per_image: self.tokens_per_image,
                max_length: self.max_length,
            },
            processor: ImageProcessor::new(ProcessorConfig::clip_336()),
        })
    }
}

/// Runs `llava data`.
pub fn run(command: &Args) -> llava::Result<ExitCode> {
    match command {
        Args::Check {
            data,
            json,
            no_decode,
        } => check(data, *json, !no_decode)?,
        Args::Show { data, index, id } => show(data, *index, id.as_deref())?,
        Args::MixLike {
            output,
            records,
            seed,
        } => {
            let bytes = llava::data::mix::write_mix_like(output, *records, *seed)?;
            eprintln!(
                "{}: {records} records, {:.1} MB",
                output.display(),
                bytes as f64 / 1e6
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `llava data check`: every record checked (images decoded when `decode`), with a progress bar
/// on a terminal; the report as JSON or as a summary.
fn check(data: &DataArgs, json: bool, decode: bool) -> llava::Result<()> {
    let dataset = data.open()?;
    // A progress bar on a terminal: the 665K mix takes minutes.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(dataset.records.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} records  {per_sec}  {elapsed} elapsed, {eta} left",
            )
            .expect("a valid template"),
        );
        bar
    });
    let report = llava::data::check_with_progress(&dataset, decode, |done| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("reports serialise")
        );
    } else {
        print!("{}", report.summary(&data.data));
    }
    Ok(())
}

/// `llava data show`: the usable record at `index` (or with the id `id`) as the model sees it,
/// each token with its label.
fn show(data: &DataArgs, index: usize, id: Option<&str>) -> llava::Result<()> {
    let unsupported = llava::Error::Unsupported;
    let dataset = data.open()?;
    let index = match id {
        Some(id) => dataset
            .records
            .iter()
            .position(|r| r.is_ok_and(|r| r.id == id))
            .ok_or_else(|| unsupported(format!("no usable record has id `{id}`")))?,
        None => index,
    };
    if index >= dataset.records.len() {
        return Err(unsupported(format!(
            "no usable record {index} (there are {})",
            dataset.records.len()
        )));
    }
    let record = dataset.records.get(index).map_err(|bad| {
        unsupported(format!(
            "record #{}: {}: {}",
            bad.index, bad.reason, bad.detail
        ))
    })?;
    let tokens = dataset
        .templater
        .tokenize(&record)
        .map_err(|(reason, detail)| {
            unsupported(format!("record {}: {reason}: {detail}", record.id))
        })?;
    let table = dataset.templater.render(&tokens)?;
    print!(
        "record {} (id {}), images {:?}\n{table}",
        index, record.id, record.images
    );
    Ok(())
}
