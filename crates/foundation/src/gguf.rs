//! GGUF files, as llama.cpp reads them (format version 3): metadata keys with typed values, then
//! tensors in ggml's types, each at an offset aligned to [`ALIGNMENT`].
//!
//! The block formats follow ggml's reference quantizers (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_0_ref` in `ggml-quants.c`), so a file written here holds the bytes llama.cpp's
//! own converter would write for the same values. See `docs/dev/gguf-notes.md`.

use std::io::Write;
use std::path::Path;

use half::{bf16, f16};

/// Where each tensor's data starts: a multiple of this many bytes (`general.alignment`'s default).
pub const ALIGNMENT: usize = 32;

/// Values per Q8_0 or Q4_0 block.
pub const BLOCK: usize = 32;

/// A metadata value. llama.cpp checks the types of the keys it reads: counts are `U32`, norms'
/// epsilons `F32`, flags `Bool`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_INT32`.
    I32(i32),
    /// `GGUF_TYPE_FLOAT32`.
    F32(f32),
    /// `GGUF_TYPE_BOOL`.
    Bool(bool),
    /// `GGUF_TYPE_STRING`.
    Str(String),
    /// An array of `GGUF_TYPE_INT32`.
    I32s(Vec<i32>),
    /// An array of `GGUF_TYPE_FLOAT32`.
    F32s(Vec<f32>),
    /// An array of `GGUF_TYPE_STRING`.
    Strs(Vec<String>),
    /// An array of `GGUF_TYPE_BOOL`.
    Bools(Vec<bool>),
}

/// A tensor's element type in the file (ggml's type ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// `GGML_TYPE_F32`.
    F32,
    /// `GGML_TYPE_F16`.
    F16,
    /// `GGML_TYPE_BF16`: bfloat16, rounded to nearest even as ggml rounds.
    BF16,
    /// `GGML_TYPE_Q4_0`: blocks of 32 values, an f16 scale and 16 bytes of 4-bit codes.
    Q4_0,
    /// `GGML_TYPE_Q8_0`: blocks of 32 values, an f16 scale and 32 int8 codes.
    Q8_0,
}

impl TensorType {
    /// ggml's id for the type.
    pub fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::BF16 => 30,
            TensorType::Q4_0 => 2,
            TensorType::Q8_0 => 8,
        }
    }

    /// `general.file_type` of a file whose matrices are of this type (llama.cpp's `LLAMA_FTYPE_*`).
    pub fn file_type(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::BF16 => 32,
            TensorType::Q4_0 => 2,
            TensorType::Q8_0 => 7,
        }
    }

    /// Whether rows must be a whole number of blocks.
    pub fn is_blocked(self) -> bool {
        matches!(self, TensorType::Q4_0 | TensorType::Q8_0)
    }

    /// The bytes `count` values take in this type (`count` a multiple of [`BLOCK`] when blocked).
    pub fn encoded_len(self, count: usize) -> usize {
        match self {
            TensorType::F32 => 4 * count,
            TensorType::F16 | TensorType::BF16 => 2 * count,
            TensorType::Q8_0 => count / BLOCK * (2 + BLOCK),
            TensorType::Q4_0 => count / BLOCK * (2 + BLOCK / 2),
        }
    }

    /// `values` (a row-major tensor whose rows have a multiple of [`BLOCK`] values when the type
    /// is blocked) in this type's bytes.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            TensorType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorType::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            TensorType::BF16 => values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
            TensorType::Q8_0 => values.chunks(BLOCK).flat_map(q8_0_block).collect(),
            TensorType::Q4_0 => values.chunks(BLOCK).flat_map(q4_0_block).collect(),
        }
    }
}

/// One Q8_0 block: `d = max|x| / 127`, codes `round(x / d)` (half away from zero), as ggml.
fn q8_0_block(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = Vec::with_capacity(2 + BLOCK);
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
    out
}

/// One Q4_0 block: `d = m / -8` for the value `m` of largest magnitude, codes
/// `min(15, trunc(x / d + 8.5))`; the first 16 values in the low nibbles, the next 16 in the high.
fn q4_0_block(x: &[f32]) -> Vec<u8> {
    let mut max = 0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let code = |v: f32| ((v * id + 8.5) as i32).min(15) as u8;
    let mut out = Vec::with_capacity(2 + BLOCK / 2);
    out.extend(f16::from_f32(d).to_le_bytes());
    let half = BLOCK / 2;
    out.extend((0..half).map(|j| code(x[j]) | (code(x[j + half]) << 4)));
    out
}

/// Where a tensor's values come from when the file is written.
pub type Source<'a> = Box<dyn Fn() -> Result<Vec<f32>, String> + 'a>;

/// A GGUF file being assembled: metadata in insertion order, then the tensors. Tensors added
/// with [`GgufWriter::add_lazy`] are read and encoded one at a time as the file is written, so a
/// whole model's encoded bytes are never in memory at once.
#[derive(Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<Tensor<'a>>,
}

struct Tensor<'a> {
    name: String,
    /// Row-major (PyTorch's) order; the file lists them innermost first.
    shape: Vec<u64>,
    kind: TensorType,
    data: Data<'a>,
}

enum Data<'a> {
    /// Encoded already.
    Bytes(Vec<u8>),
    /// Read and encoded when written.
    Lazy(Source<'a>),
}

impl<'a> Tensor<'a> {
    /// Its encoded size.
    fn len(&self) -> usize {
        self.kind
            .encoded_len(self.shape.iter().product::<u64>() as usize)
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Adds tensor `name` of `shape` (row-major, as PyTorch holds it) with `values` stored as
    /// `kind`. A blocked type needs the last dimension to be a multiple of [`BLOCK`]; the error
    /// names the tensor.
    pub fn add(
        &mut self,
        name: &str,
        shape: &[i64],
        values: &[f32],
        kind: TensorType,
    ) -> Result<(), String> {
        let count: i64 = shape.iter().product();
        if count as usize != values.len() || shape.iter().any(|&d| d < 0) {
            return Err(format!(
                "tensor `{name}`: shape {shape:?} does not hold {} values",
                values.len()
            ));
        }
        self.check(name, shape, kind)?;
        self.push(name, shape, kind, Data::Bytes(kind.encode(values)))
    }

    /// Adds tensor `name` of `shape` stored as `kind`, whose values `source` reads when the file
    /// is written (it must give exactly the shape's count; the write fails naming the tensor
    /// otherwise).
    pub fn add_lazy(
        &mut self,
        name: &str,
        shape: &[i64],
        kind: TensorType,
        source: Source<'a>,
    ) -> Result<(), String> {
        if shape.iter().any(|&d| d < 0) {
            return Err(format!("tensor `{name}`: negative dimension in {shape:?}"));
        }
        self.check(name, shape, kind)?;
        self.push(name, shape, kind, Data::Lazy(source))
    }

    /// Adds tensor `name` as `kind` from checkpoint tensor `tensor` (its shape from the header),
    /// read as f32 and passed through `map` only when the file is written, its mapped pages
    /// released once read: an export holds one tensor at a time.
    pub fn add_from_checkpoint(
        &mut self,
        name: &str,
        checkpoint: &'a crate::Checkpoint,
        tensor: &str,
        kind: TensorType,
        map: impl Fn(tch::Tensor) -> tch::Tensor + 'a,
    ) -> Result<(), String> {
        let shape = checkpoint.shape(tensor).map_err(|e| e.to_string())?;
        let tensor = tensor.to_string();
        let source = Box::new(move || -> Result<Vec<f32>, String> {
            let t = checkpoint.tensor(&tensor).map_err(|e| e.to_string())?;
            checkpoint.release(&tensor);
            let t = map(t.to_kind(tch::Kind::Float));
            Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| e.to_string())
        });
        self.add_lazy(name, &shape, kind, source)
    }

    /// A blocked type's rows must be whole blocks; a name is added once.
    fn check(&self, name: &str, shape: &[i64], kind: TensorType) -> Result<(), String> {
        let inner = shape.last().copied().unwrap_or(1);
        if kind.is_blocked() && inner % BLOCK as i64 != 0 {
            return Err(format!(
                "tensor `{name}` {shape:?}: {kind:?} needs rows of a multiple of {BLOCK} values"
            ));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(format!("tensor `{name}` is added twice"));
        }
        Ok(())
    }

    fn push(
        &mut self,
        name: &str,
        shape: &[i64],
        kind: TensorType,
        data: Data<'a>,
    ) -> Result<(), String> {
        self.tensors.push(Tensor {
            name: name.to_string(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            kind,
            data,
        });
        Ok(())
    }

    /// The file's bytes (a lazy tensor's source failing is an error naming it).
    pub fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Writes the file atomically, streaming the tensors' bytes (each lazy tensor read and
    /// encoded only as it is written).
    pub fn write(&self, path: &Path) -> crate::Result<()> {
        crate::io::write_atomic_with(path, |out| self.write_to(out))
    }

    /// Streams the file into `out`.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut head = Vec::new();
        head.extend(b"GGUF");
        head.extend(3u32.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut head, key);
            put_value(&mut head, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend((t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                head.extend(d.to_le_bytes());
            }
            head.extend(t.kind.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset += padded(t.len()) as u64;
        }
        head.resize(padded(head.len()), 0);
        out.write_all(&head)?;
        let zeros = [0u8; ALIGNMENT];
        for t in &self.tensors {
            let lazy;
            let bytes = match &t.data {
                Data::Bytes(b) => b,
                Data::Lazy(source) => {
                    let fail =
                        |e: String| std::io::Error::other(format!("tensor `{}`: {e}", t.name));
                    let values = source().map_err(fail)?;
                    let expected = t.shape.iter().product::<u64>() as usize;
                    if values.len() != expected {
                        return Err(fail(format!(
                            "its source gave {} values for shape {:?}",
                            values.len(),
                            t.shape
                        )));
                    }
                    lazy = t.kind.encode(&values);
                    &lazy
                }
            };
            out.write_all(bytes)?;
            out.write_all(&zeros[..padded(bytes.len()) - bytes.len()])?;
        }
        Ok(())
    }
}

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    const U32: u32 = 4;
    const I32: u32 = 5;
    const F32: u32 = 6;
    const BOOL: u32 = 7;
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;
    let array_head = |out: &mut Vec<u8>, kind: u32, len: usize| {
        out.extend(ARRAY.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend((len as u64).to_le_bytes());
    };
    match value {
        Value::U32(v) => {
            out.extend(U32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Value::I32(v) => {
            out.extend(I32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Value::F32(v) => {
            out.extend(F32.to_le_bytes());
            out.extend(v.to_le_bytes());
        }
        Value::Bool(v) => {
            out.extend(BOOL.to_le_bytes());
            out.push(*v as u8);
        }
        Value::Str(s) => {
            out.extend(STRING.to_le_bytes());
            put_str(out, s);
        }
        Value::I32s(vs) => {
            array_head(out, I32, vs.len());
            vs.iter().for_each(|v| out.extend(v.to_le_bytes()));
        }
        Value::F32s(vs) => {
            array_head(out, F32, vs.len());
            vs.iter().for_each(|v| out.extend(v.to_le_bytes()));
        }
        Value::Strs(vs) => {
            array_head(out, STRING, vs.len());
            vs.iter().for_each(|s| put_str(out, s));
        }
        Value::Bools(vs) => {
            array_head(out, BOOL, vs.len());
            out.extend(vs.iter().map(|&v| v as u8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dequantize_q8_0(block: &[u8]) -> Vec<f32> {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        block[2..].iter().map(|&q| q as i8 as f32 * d).collect()
    }

    fn dequantize_q4_0(block: &[u8]) -> Vec<f32> {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let codes = &block[2..];
        let low = codes.iter().map(|c| ((c & 15) as f32 - 8.0) * d);
        let high = codes.iter().map(|c| ((c >> 4) as f32 - 8.0) * d);
        low.chain(high).collect()
    }

    fn values() -> Vec<f32> {
        (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect()
    }

    #[test]
    fn q8_0_blocks_round_trip_within_half_a_step() {
        let x = values();
        let bytes = TensorType::Q8_0.encode(&x);
        assert_eq!(bytes.len(), 2 * 34);
        for (block, xs) in bytes.chunks(34).zip(x.chunks(32)) {
            let d = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in dequantize_q8_0(block).iter().zip(xs) {
                assert!((a - b).abs() <= d * 0.5 + 1e-3, "{a} {b}");
            }
        }
    }

    #[test]
    fn q4_0_blocks_round_trip_within_a_step() {
        let x = values();
        let bytes = TensorType::Q4_0.encode(&x);
        assert_eq!(bytes.len(), 2 * 18);
        for (block, xs) in bytes.chunks(18).zip(x.chunks(32)) {
            let d = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 8.0;
            // Half a step, but a full one at the far end opposite the largest value: codes
            // reach -8 steps one way and +7 the other.
            for (a, b) in dequantize_q4_0(block).iter().zip(xs) {
                assert!((a - b).abs() <= d + 1e-3, "{a} {b}");
            }
        }
        // The largest-magnitude value is exact (code 0, or -8 steps).
        let zeros = TensorType::Q4_0.encode(&[0.0; 32]);
        assert!(zeros[2..].iter().all(|&c| c == 0x88));
    }

    #[test]
    fn layout_is_aligned_and_names_bad_tensors() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str("gemma".into()));
        w.set("gemma.block_count", Value::U32(2));
        w.set("gemma.block_count", Value::U32(3));
        w.add("a", &[3], &[1.0, 2.0, 3.0], TensorType::F32).unwrap();
        w.add("b", &[2, 32], &[0.5; 64], TensorType::Q8_0).unwrap();
        let bytes = w.to_bytes().unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(bytes.len() % ALIGNMENT, 0);
        // Data: a (12 bytes, padded to 32), then b (2 blocks of 34 bytes, padded to 96), after an
        // aligned header.
        let data = bytes.len() - 128;
        assert_eq!(data % ALIGNMENT, 0);
        assert_eq!(&bytes[data..data + 4], 1f32.to_le_bytes());
        assert_eq!(
            &bytes[data + 32..data + 34],
            f16::from_f32(0.5 / 127.0).to_le_bytes()
        );
        let err = w
            .add("c", &[2, 20], &[0.0; 40], TensorType::Q4_0)
            .unwrap_err();
        assert!(err.contains("`c`") && err.contains("32"), "{err}");
        let err = w.add("a", &[1], &[0.0], TensorType::F32).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let err = w.add("d", &[2, 2], &[0.0; 3], TensorType::F32).unwrap_err();
        assert!(err.contains("`d`"), "{err}");
    }

    #[test]
    fn lazy_tensors_write_the_same_bytes_and_name_bad_sources() {
        let values: Vec<f32> = (0..64).map(|i| i as f32 / 7.0).collect();
        let mut eager = GgufWriter::new();
        eager.add("b", &[2, 32], &values, TensorType::Q4_0).unwrap();
        let mut lazy = GgufWriter::new();
        let v = values.clone();
        lazy.add_lazy(
            "b",
            &[2, 32],
            TensorType::Q4_0,
            Box::new(move || Ok(v.clone())),
        )
        .unwrap();
        assert_eq!(eager.to_bytes().unwrap(), lazy.to_bytes().unwrap());
        assert_eq!(TensorType::Q8_0.encoded_len(64), 68);
        assert_eq!(TensorType::F16.encoded_len(3), 6);
        let mut short = GgufWriter::new();
        short
            .add_lazy("s", &[4], TensorType::F32, Box::new(|| Ok(vec![0.0; 3])))
            .unwrap();
        let err = short.to_bytes().unwrap_err().to_string();
        assert!(err.contains("`s`") && err.contains("3 values"), "{err}");
        let mut failing = GgufWriter::new();
        failing
            .add_lazy(
                "f",
                &[1],
                TensorType::F32,
                Box::new(|| Err("unreadable".into())),
            )
            .unwrap();
        let err = failing.to_bytes().unwrap_err().to_string();
        assert!(err.contains("`f`: unreadable"), "{err}");
    }
}
