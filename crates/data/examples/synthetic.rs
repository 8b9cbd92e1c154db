//! Writes the built-in synthetic dataset to a folder: `cargo run -p data --example synthetic -- DIR`.
fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "synthetic".into());
    let config = data::synthetic::SyntheticConfig::default();
    match data::synthetic::write(std::path::Path::new(&dir), &config) {
        Ok(files) => println!(
            "wrote {}",
            files.images.parent().unwrap_or(&files.images).display()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
