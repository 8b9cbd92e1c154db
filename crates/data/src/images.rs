//! Where images come from: a folder (nested paths such as LCS-558K's `00453/004539375.jpg`, or
//! the 665K mix's data root) or a zip read in place (CC3M-595K's `images.zip`).

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use memmap2::Mmap;

use crate::record::SkipReason;
use crate::{Error, Result};

/// A memory-mapped file that many readers share.
#[derive(Clone)]
struct SharedMap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// An image store: a folder or a zip. Clones are cheap and read concurrently.
#[derive(Clone)]
pub struct ImageSource(Store);

#[derive(Clone)]
enum Store {
    /// Paths are relative to this folder.
    Dir(PathBuf),
    /// Paths are entry names of this zip (also tried under the zip's single top folder).
    Zip {
        /// The zip file.
        path: PathBuf,
        /// The opened archive; clones share the central directory and the mapped bytes.
        archive: zip::ZipArchive<Cursor<SharedMap>>,
        /// A folder every entry sits in, if there is exactly one (`images/…`).
        top: Option<String>,
    },
}

impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Store::Dir(p) => write!(f, "Dir({})", p.display()),
            Store::Zip { path, .. } => write!(f, "Zip({})", path.display()),
        }
    }
}

/// Why an image could not be had, with the path tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFailure {
    /// Missing or corrupt.
    pub reason: SkipReason,
    /// What was tried and what went wrong.
    pub detail: String,
}

impl ImageSource {
    /// Opens a folder or a `.zip` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Ok(ImageSource(Store::Dir(path.to_path_buf())));
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a dataset file that is not written while we train on it.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let archive = zip::ZipArchive::new(Cursor::new(SharedMap(Arc::new(map)))).map_err(|e| {
            Error::Format {
                path: path.to_path_buf(),
                message: format!("not a folder or a readable zip: {e}"),
            }
        })?;
        let top = {
            let mut tops = archive
                .file_names()
                .filter_map(|n| n.split_once('/').map(|(top, _)| top));
            tops.next()
                .map(str::to_string)
                .filter(|first| tops.all(|t| t == first))
        };
        Ok(ImageSource(Store::Zip {
            path: path.to_path_buf(),
            archive,
            top,
        }))
    }

    /// Whether the image at `relative` exists (without decoding it).
    pub fn exists(&self, relative: &str) -> bool {
        match &self.0 {
            Store::Dir(root) => root.join(relative).is_file(),
            Store::Zip { archive, top, .. } => zip_name(archive, top, relative).is_some(),
        }
    }

    /// Reads the bytes of the image at `relative`.
    pub fn read(&self, relative: &str) -> Result<Vec<u8>, ImageFailure> {
        match &self.0 {
            Store::Dir(root) => {
                let path = root.join(relative);
                let fail = |e: std::io::Error| ImageFailure {
                    reason: if e.kind() == std::io::ErrorKind::NotFound {
                        SkipReason::MissingImage
                    } else {
                        SkipReason::CorruptImage
                    },
                    detail: format!("{}: {e}", path.display()),
                };
                let file = std::fs::File::open(&path).map_err(fail)?;
                read_bounded(file, &path.display().to_string()).map_err(|e| ImageFailure {
                    reason: SkipReason::CorruptImage,
                    detail: e,
                })
            }
            Store::Zip { path, archive, top } => {
                let missing = || ImageFailure {
                    reason: SkipReason::MissingImage,
                    detail: format!("{}: no entry `{relative}`", path.display()),
                };
                let name = zip_name(archive, top, relative).ok_or_else(missing)?;
                let mut archive = archive.clone();
                let entry = archive.by_name(&name).map_err(|_| missing())?;
                read_bounded(entry, &format!("{}: entry `{name}`", path.display())).map_err(
                    |detail| ImageFailure {
                        reason: SkipReason::CorruptImage,
                        detail,
                    },
                )
            }
        }
    }

    /// Reads and decodes the image at `relative` to RGB. An image larger than Pillow's pixel limit
    /// (`image_processing::MAX_IMAGE_PIXELS`) is refused from its header, before decoding.
    pub fn load(&self, relative: &str) -> Result<RgbImage, ImageFailure> {
        let bytes = self.read(relative)?;
        image_processing::decode(&bytes, relative).map_err(|e| ImageFailure {
            reason: SkipReason::CorruptImage,
            detail: e.to_string(),
        })
    }
}

fn zip_name(
    archive: &zip::ZipArchive<Cursor<SharedMap>>,
    top: &Option<String>,
    relative: &str,
) -> Option<String> {
    let relative = relative.trim_start_matches("./");
    if archive.index_for_name(relative).is_some() {
        return Some(relative.to_string());
    }
    let nested = format!("{}/{relative}", top.as_deref()?);
    archive.index_for_name(&nested).map(|_| nested)
}

/// The largest image file read (an image file is a few MB; this bounds what a corrupt zip header
/// or a stray huge file can make us allocate).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// Reads at most [`MAX_IMAGE_BYTES`] from `reader`; a longer file is an error naming `what`.
fn read_bounded(reader: impl Read, what: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_IMAGE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{what}: {e}"))?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(format!(
            "{what}: larger than {} MB, not read as an image",
            MAX_IMAGE_BYTES >> 20
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn png() -> Vec<u8> {
        let mut bytes = Vec::new();
        RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]))
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn folders_with_nested_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("00453")).unwrap();
        std::fs::write(dir.path().join("00453/004539375.jpg"), png()).unwrap();
        std::fs::write(dir.path().join("bad.jpg"), b"junk").unwrap();
        let src = ImageSource::open(dir.path()).unwrap();
        assert!(src.exists("00453/004539375.jpg"));
        assert_eq!(
            src.load("00453/004539375.jpg").unwrap().dimensions(),
            (4, 3)
        );
        assert_eq!(
            src.load("nope.jpg").unwrap_err().reason,
            SkipReason::MissingImage
        );
        let corrupt = src.load("bad.jpg").unwrap_err();
        assert_eq!(corrupt.reason, SkipReason::CorruptImage);
        assert!(corrupt.detail.contains("bad.jpg"));
    }

    #[test]
    fn zips_are_read_in_place_with_or_without_a_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("images/GCC_train_002582585.jpg", options)
            .unwrap();
        zip.write_all(&png()).unwrap();
        zip.start_file("images/broken.jpg", options).unwrap();
        zip.write_all(b"\xff\xd8 truncated").unwrap();
        zip.finish().unwrap();
        let src = ImageSource::open(&path).unwrap();
        assert_eq!(
            src.load("GCC_train_002582585.jpg").unwrap().dimensions(),
            (4, 3)
        );
        assert_eq!(
            src.load("images/GCC_train_002582585.jpg")
                .unwrap()
                .dimensions(),
            (4, 3)
        );
        assert_eq!(
            src.load("missing.jpg").unwrap_err().reason,
            SkipReason::MissingImage
        );
        assert_eq!(
            src.load("broken.jpg").unwrap_err().reason,
            SkipReason::CorruptImage
        );
        // Clones read concurrently.
        let clones: Vec<_> = (0..4).map(|_| src.clone()).collect();
        std::thread::scope(|s| {
            for c in &clones {
                s.spawn(|| assert!(c.load("GCC_train_002582585.jpg").is_ok()));
            }
        });
        let err = ImageSource::open(dir.path().join("nope.zip"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.zip"), "{err}");
    }
}
