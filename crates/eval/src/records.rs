//! Benchmark data as the harnesses ship it, read into records (one JSON object per question):
//! VLMEvalKit's TSV files (a header row, one row per question, images as base64 in an `image`
//! column), lmms-eval's Hugging Face datasets as their parquet files (images as `{bytes, path}`
//! structs, whose bytes become base64 here), and rows exported as JSON lines or a JSON array.
//! Each benchmark module reads its fields from a record under either harness's names.

use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::Error;

/// One question's fields.
pub type Record = Map<String, Value>;

/// The records of a data file and what could not be read.
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// The rows that parsed, in file order.
    pub rows: Vec<Record>,
    /// Rows that did not parse (a TSV row with too many cells, a JSON line that is not an object),
    /// each named by its line.
    pub malformed: Vec<String>,
}

/// Reads a benchmark data file by its extension: `.tsv` (VLMEvalKit), `.parquet` (a Hugging Face
/// dataset's split, as lmms-eval downloads it), `.jsonl` (one record per line) or `.json` (an
/// array of records).
pub fn read(path: &Path) -> Result<Records, Error> {
    let named = |m: String| format!("{}: {m}", path.display());
    if path.extension().is_some_and(|e| e == "parquet") {
        return parquet(path).map_err(|e| Error::File(named(e)));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    let mut records = match path.extension().and_then(|e| e.to_str()) {
        Some("tsv") => tsv(&text).map_err(|e| Error::File(named(e)))?,
        Some("jsonl") => jsonl(&text),
        Some("json") => {
            let value: Value =
                serde_json::from_str(&text).map_err(|e| Error::File(named(e.to_string())))?;
            json_array(value).map_err(|e| Error::File(named(e)))?
        }
        _ => {
            return Err(Error::Request(format!(
                "{}: benchmark data must be .tsv (VLMEvalKit), .parquet (lmms-eval's datasets), \
                 .jsonl or .json",
                path.display()
            )));
        }
    };
    for m in &mut records.malformed {
        *m = named(std::mem::take(m));
    }
    Ok(records)
}

/// A VLMEvalKit TSV file (as pandas writes it: tab-separated, fields with tabs, quotes or line
/// breaks in double quotes, `""` for a quote). Every cell is a string; a short row is padded with
/// empty cells, a long one is malformed.
pub fn tsv(text: &str) -> Result<Records, String> {
    let mut rows = tsv_rows(text).into_iter();
    let Some((_, header)) = rows.next() else {
        return Err("empty file: no header row".into());
    };
    let mut out = Records::default();
    for (line, cells) in rows {
        if cells.len() == 1 && cells[0].is_empty() {
            continue;
        }
        if cells.len() > header.len() {
            out.malformed.push(format!(
                "line {line}: {} cells for {} columns",
                cells.len(),
                header.len()
            ));
            continue;
        }
        let mut r = Record::new();
        for (i, name) in header.iter().enumerate() {
            let cell = cells.get(i).cloned().unwrap_or_default();
            r.insert(name.clone(), Value::String(cell));
        }
        out.rows.push(r);
    }
    Ok(out)
}

/// The rows of a TSV text with the line each starts on.
fn tsv_rows(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if cell.is_empty() => quoted = true,
            '\t' if !quoted => row.push(std::mem::take(&mut cell)),
            '\r' if !quoted && chars.peek() == Some(&'\n') => {}
            '\n' if !quoted => {
                row.push(std::mem::take(&mut cell));
                rows.push((row_line, std::mem::take(&mut row)));
                line += 1;
                row_line = line;
            }
            c => {
                if c == '\n' {
                    line += 1;
                }
                cell.push(c);
            }
        }
    }
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push((row_line, row));
    }
    rows
}

/// A parquet file's rows as records: strings, numbers and booleans as they are, binary cells as
/// base64 strings, structs as objects (an image is `{"bytes": <base64>, "path": …}`), lists as
/// arrays. A row that cannot be read is malformed, named by its number.
fn parquet(path: &Path) -> Result<Records, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("not a parquet file: {e}"))?;
    let rows = reader.get_row_iter(None).map_err(|e| e.to_string())?;
    let mut out = Records::default();
    for (i, row) in rows.enumerate() {
        match row {
            Ok(row) => out.rows.push(
                row.get_column_iter()
                    .map(|(name, field)| (name.clone(), field_value(field)))
                    .collect(),
            ),
            Err(e) => out.malformed.push(format!("row {}: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// One parquet cell as JSON.
fn field_value(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => (*n).into(),
        Field::Short(n) => (*n).into(),
        Field::Int(n) => (*n).into(),
        Field::Long(n) => (*n).into(),
        Field::UByte(n) => (*n).into(),
        Field::UShort(n) => (*n).into(),
        Field::UInt(n) => (*n).into(),
        Field::ULong(n) => (*n).into(),
        Field::Float(x) => {
            serde_json::Number::from_f64(f64::from(*x)).map_or(Value::Null, Value::Number)
        }
        Field::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b.data()))
        }
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(name, f)| (name.clone(), field_value(f)))
                .collect(),
        ),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_value).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_value(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, field_value(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

/// JSON lines, each an object.
fn jsonl(text: &str) -> Records {
    let mut out = Records::default();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(r)) => out.rows.push(r),
            Ok(_) => out
                .malformed
                .push(format!("line {}: not a JSON object", i + 1)),
            Err(e) => out.malformed.push(format!("line {}: {e}", i + 1)),
        }
    }
    out
}

/// A JSON array of objects.
fn json_array(value: Value) -> Result<Records, String> {
    let Value::Array(items) = value else {
        return Err("expected a JSON array of records".into());
    };
    let mut out = Records::default();
    for (i, v) in items.into_iter().enumerate() {
        match v {
            Value::Object(r) => out.rows.push(r),
            _ => out
                .malformed
                .push(format!("item {}: not a JSON object", i + 1)),
        }
    }
    Ok(out)
}

/// The images of a record as encoded bytes: VLMEvalKit's `image` cell (base64, or a Python list of
/// base64 strings for several images; a cell of at most 64 characters names the row whose image
/// it shares), resolved against `rows`; or `image_path` cells relative to `base`.
pub fn images(record: &Record, rows: &[Record], base: &Path) -> Result<Vec<Vec<u8>>, String> {
    if let Some(cell) = record.get("image").and_then(Value::as_str) {
        let cell = resolve_reference(cell, rows);
        let encoded = super::score::pystr::string_list(cell).unwrap_or_else(|| vec![cell.into()]);
        return encoded
            .iter()
            .map(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|e| format!("`image` is not base64: {e}"))
            })
            .collect();
    }
    if let Some(paths) = record.get("image_path").and_then(Value::as_str) {
        let list =
            super::score::pystr::string_list(paths).unwrap_or_else(|| vec![paths.to_string()]);
        return list
            .iter()
            .map(|p| {
                let path = base.join(p);
                std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect();
    }
    Err("no `image` or `image_path`".into())
}

/// The images embedded in a dataset row (parquet): `image`, `image_1` … `image_7` (MMMU) or
/// `images`, each a `{"bytes": <base64>}` struct, in that order; empty when the row embeds none.
pub fn embedded_images(record: &Record) -> Result<Vec<Vec<u8>>, String> {
    let mut cells: Vec<&Value> = Vec::new();
    for name in [
        "image", "image_1", "image_2", "image_3", "image_4", "image_5", "image_6", "image_7",
    ] {
        if let Some(v) = record.get(name).filter(|v| v.is_object()) {
            cells.push(v);
        }
    }
    if let Some(Value::Array(list)) = record.get("images") {
        cells.extend(list.iter().filter(|v| v.is_object()));
    }
    cells
        .iter()
        .filter_map(|c| c.get("bytes").and_then(Value::as_str))
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("an embedded image is not base64: {e}"))
        })
        .collect()
}

/// A short `image` cell is the index of the row holding the image (VLMEvalKit stores a shared
/// image once).
fn resolve_reference<'a>(cell: &'a str, rows: &'a [Record]) -> &'a str {
    if cell.len() > 64 {
        return cell;
    }
    rows.iter()
        .find(|r| r.get("index").and_then(Value::as_str) == Some(cell.trim()))
        .and_then(|r| r.get("image").and_then(Value::as_str))
        .filter(|c| c.len() > 64)
        .unwrap_or(cell)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_as_pandas_writes_it() {
        let text = "index\tquestion\tA\tanswer\n\
                    0\t\"a \"\"quoted\"\"\tquestion\nover lines\"\tx\tA\n\
                    1\tshort\n\
                    2\ttoo\tmany\tcells\there\n\
                    \n";
        let r = tsv(text).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0]["question"], "a \"quoted\"\tquestion\nover lines");
        assert_eq!(r.rows[0]["answer"], "A");
        assert_eq!(r.rows[1]["answer"], "");
        assert_eq!(r.malformed, ["line 5: 5 cells for 4 columns"]);
    }

    #[test]
    fn images_by_reference_and_lists() {
        let b = base64::engine::general_purpose::STANDARD;
        let long = b.encode(vec![7u8; 60]);
        let rows: Vec<Record> = vec![
            serde_json::from_value(serde_json::json!({"index": "0", "image": long})).unwrap(),
            serde_json::from_value(serde_json::json!({"index": "1", "image": "0"})).unwrap(),
            serde_json::from_value(
                serde_json::json!({"index": "2", "image": format!("['{long}', '{long}']")}),
            )
            .unwrap(),
        ];
        let base = Path::new(".");
        assert_eq!(images(&rows[1], &rows, base).unwrap(), [vec![7u8; 60]]);
        assert_eq!(images(&rows[2], &rows, base).unwrap().len(), 2);
        let bad: Record = serde_json::from_value(serde_json::json!({"image": "@@@"})).unwrap();
        assert!(images(&bad, &rows, base).unwrap_err().contains("base64"));
    }
}
