//! A reader for CTranslate2's `model.bin`, the format of the Hub's `Systran/faster-whisper-*`
//! repositories, so that users need no Python conversion step.
//!
//! The layout (all little-endian, no alignment or padding):
//! ```text
//! u32 binary version (2..=6 read here)
//! version >= 2: string spec name, u32 spec revision
//! u32 variable count, then per variable:
//!     string name, u8 rank, rank x u32 dims, u8 dtype (version >= 4; before: u8 item size),
//!     u32 byte count, the bytes
//! version >= 3: u32 alias count, then per alias: string alias, string target
//! string = u16 byte length (including a trailing NUL) + bytes
//! ```
//! dtypes: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. Quantised weights (i8) come with a
//! `<name>_scale` f32 vector, one scale per output row (`weight = q / scale`).
//!
//! Every length is checked against the file before anything is allocated for it: `model.bin` comes
//! from the internet.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: variable '{name}': {source}")]
    Tensor { path: String, name: String, source: Box<candle_core::Error> },
}

/// A tensor's element type as CTranslate2 numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    /// Version < 4 files give only the item size; CTranslate2 then meant these types.
    fn from_item_size(size: u8) -> Option<Self> {
        Some(match size {
            4 => Self::F32,
            2 => Self::I16,
            1 => Self::I8,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::I8 => 1,
        }
    }
}

/// Where one variable's bytes are in the file.
#[derive(Debug, Clone)]
pub struct Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2Dtype,
    offset: usize,
    len: usize,
}

/// A parsed `model.bin`: the variables' table over the file's bytes (memory-mapped).
pub struct Ct2Model {
    path: String,
    bytes: Bytes,
    pub version: u32,
    pub spec: String,
    pub spec_revision: u32,
    variables: HashMap<String, Variable>,
    aliases: HashMap<String, String>,
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Upper bounds that no real model comes near; they keep a hostile header from making the reader
/// loop or allocate for long.
const MAX_RANK: usize = 8;
const MAX_VARIABLES: usize = 1 << 20;

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            format!("truncated: {what} at byte {} needs {n} bytes, the file has {}", self.at, self.bytes.len())
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.u16(what)? as usize;
        let raw = self.take(len, what)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

impl Ct2Model {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self, Ct2Error> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| Ct2Error::Io { path: shown.clone(), source })?;
        // SAFETY: the map is read-only and lives as long as the model; zoo never writes weight
        // files in place (downloads are renamed into the cache), so the bytes do not change under it.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|source| Ct2Error::Io { path: shown.clone(), source })?;
        Self::parse(shown, Bytes::Mapped(map))
    }

    /// Parses bytes already in memory (tests, fuzzing); `name` labels errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, Ct2Error> {
        Self::parse(name.to_string(), Bytes::Owned(bytes))
    }

    fn parse(path: String, bytes: Bytes) -> Result<Self, Ct2Error> {
        let invalid = |reason: String| Ct2Error::Invalid { path: path.clone(), reason };
        let mut c = Cursor { bytes: &bytes, at: 0 };
        let version = c.u32("the format version").map_err(invalid)?;
        if !(2..=6).contains(&version) {
            return Err(invalid(format!(
                "not a CTranslate2 model.bin this reader knows (format version {version}; versions 2 to 6 are read)"
            )));
        }
        let spec = c.string("the model spec name").map_err(invalid)?;
        let spec_revision = c.u32("the spec revision").map_err(invalid)?;
        let count = c.u32("the variable count").map_err(invalid)? as usize;
        if count > MAX_VARIABLES {
            return Err(invalid(format!("claims {count} variables")));
        }
        let mut variables = HashMap::with_capacity(count.min(4096));
        for index in 0..count {
            let name = c.string(&format!("the name of variable {index}")).map_err(invalid)?;
            let rank = c.u8(&format!("the rank of '{name}'")).map_err(invalid)? as usize;
            if rank > MAX_RANK {
                return Err(invalid(format!("variable '{name}' has rank {rank}")));
            }
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(c.u32(&format!("the shape of '{name}'")).map_err(invalid)? as usize);
            }
            let code = c.u8(&format!("the type of '{name}'")).map_err(invalid)?;
            let dtype = if version >= 4 { Ct2Dtype::from_code(code) } else { Ct2Dtype::from_item_size(code) }
                .ok_or_else(|| invalid(format!("variable '{name}' has an unknown type code {code}")))?;
            let len = c.u32(&format!("the size of '{name}'")).map_err(invalid)? as usize;
            let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            if elements.and_then(|n| n.checked_mul(dtype.size())) != Some(len) {
                return Err(invalid(format!(
                    "variable '{name}' holds {len} bytes, which does not match its shape {shape:?} of {dtype:?}"
                )));
            }
            let offset = c.at;
            c.take(len, &format!("the data of '{name}'")).map_err(invalid)?;
            variables.insert(name, Variable { shape, dtype, offset, len });
        }
        let mut aliases = HashMap::new();
        if version >= 3 {
            let count = c.u32("the alias count").map_err(invalid)? as usize;
            if count > MAX_VARIABLES {
                return Err(invalid(format!("claims {count} aliases")));
            }
            for _ in 0..count {
                let alias = c.string("an alias name").map_err(invalid)?;
                let target = c.string("an alias target").map_err(invalid)?;
                if !variables.contains_key(&target) {
                    return Err(invalid(format!("alias '{alias}' names a missing variable '{target}'")));
                }
                aliases.insert(alias, target);
            }
        }
        Ok(Self { path, bytes, version, spec, spec_revision, variables, aliases })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.variables.keys().map(String::as_str).chain(self.aliases.keys().map(String::as_str))
    }

    pub fn variable(&self, name: &str) -> Option<&Variable> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.variables.get(name)
    }

    fn missing(&self, name: &str) -> Ct2Error {
        Ct2Error::Invalid { path: self.path.clone(), reason: format!("has no variable '{name}'") }
    }

    /// A scalar integer (CTranslate2 stores options such as `num_heads` as 0-d tensors).
    pub fn scalar(&self, name: &str) -> Result<i64, Ct2Error> {
        let var = self.variable(name).ok_or_else(|| self.missing(name))?;
        let raw = &self.bytes[var.offset..var.offset + var.len];
        let value = match (var.dtype, raw.len()) {
            (Ct2Dtype::I8, 1) => raw[0] as i8 as i64,
            (Ct2Dtype::I16, 2) => i16::from_le_bytes([raw[0], raw[1]]) as i64,
            (Ct2Dtype::I32, 4) => i32::from_le_bytes(raw.try_into().expect("4 bytes")) as i64,
            _ => {
                return Err(Ct2Error::Invalid {
                    path: self.path.clone(),
                    reason: format!("'{name}' is not an integer scalar ({:?}, shape {:?})", var.dtype, var.shape),
                })
            }
        };
        Ok(value)
    }

    /// A variable stored in f16, as it is (`None` when it is stored in another type): for the
    /// large tables kept in f16, which widening to f32 first would hold twice.
    pub fn tensor_f16(&self, name: &str, device: &Device) -> Result<Option<Tensor>, Ct2Error> {
        let var = self.variable(name).ok_or_else(|| self.missing(name))?;
        if var.dtype != Ct2Dtype::F16 {
            return Ok(None);
        }
        let raw = &self.bytes[var.offset..var.offset + var.len];
        let values: Vec<half::f16> = raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]])).collect();
        Tensor::from_vec(values, var.shape.as_slice(), device).map(Some).map_err(|source| Ct2Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            source: Box::new(source),
        })
    }

    /// A variable as an f32 tensor, dequantising i8 weights with their `_scale`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, Ct2Error> {
        let var = self.variable(name).ok_or_else(|| self.missing(name))?;
        let raw = &self.bytes[var.offset..var.offset + var.len];
        let wrap =
            |source| Ct2Error::Tensor { path: self.path.clone(), name: name.to_string(), source: Box::new(source) };
        // The data is unaligned in the file, so each type is decoded from bytes.
        let values: Vec<f32> = match var.dtype {
            Ct2Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4"))).collect(),
            Ct2Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Ct2Dtype::Bf16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Ct2Dtype::I8 => {
                let scale_name = format!("{name}_scale");
                let scales = self.tensor(&scale_name, &Device::Cpu)?.flatten_all().and_then(|t| t.to_vec1::<f32>());
                let scales = scales.map_err(wrap)?;
                let rows = var.shape.first().copied().unwrap_or(1);
                if scales.len() != rows && scales.len() != 1 {
                    return Err(Ct2Error::Invalid {
                        path: self.path.clone(),
                        reason: format!("'{scale_name}' has {} scales for {rows} rows", scales.len()),
                    });
                }
                let row_len = var.len / rows.max(1);
                raw.iter()
                    .enumerate()
                    .map(|(i, &q)| {
                        let scale = if scales.len() == 1 { scales[0] } else { scales[i / row_len.max(1)] };
                        q as i8 as f32 / scale
                    })
                    .collect()
            }
            Ct2Dtype::I16 => raw.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32).collect(),
            Ct2Dtype::I32 => raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4")) as f32).collect(),
        };
        Tensor::from_vec(values, var.shape.as_slice(), device).and_then(|t| t.to_dtype(DType::F32)).map_err(wrap)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a version-6 `model.bin` holding `variables` (name, shape, dtype code, bytes) and
    /// `aliases`, as CTranslate2's Python converter lays it out.
    pub(crate) fn write_model_bin(variables: &[(&str, Vec<u32>, u8, Vec<u8>)], aliases: &[(&str, &str)]) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = 6u32.to_le_bytes().to_vec();
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(variables.len() as u32).to_le_bytes());
        for (name, shape, dtype, bytes) in variables {
            string(&mut out, name);
            out.push(shape.len() as u8);
            for d in shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.push(*dtype);
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (alias, target) in aliases {
            string(&mut out, alias);
            string(&mut out, target);
        }
        out
    }

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
    }

    #[test]
    fn reads_every_dtype_scalars_and_aliases() {
        let bytes = write_model_bin(
            &[
                ("a/f16", vec![2, 2], 4, f16_bytes(&[1.0, -2.0, 0.5, 3.0])),
                ("a/f32", vec![3], 0, [1.5f32, 2.5, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
                ("q/weight", vec![2, 2], 1, vec![127u8, (-127i8) as u8, 64, 0]),
                ("q/weight_scale", vec![2], 0, [127.0f32, 64.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
                ("num_heads", vec![], 2, 6i16.to_le_bytes().to_vec()),
                ("flag", vec![], 1, vec![1]),
            ],
            &[("b/alias", "a/f16")],
        );
        let model = Ct2Model::from_bytes("test.bin", bytes).unwrap();
        assert_eq!(model.spec, "WhisperSpec");
        let t = model.tensor("b/alias", &Device::Cpu).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![1.0, -2.0], vec![0.5, 3.0]]);
        assert_eq!(model.tensor("a/f32", &Device::Cpu).unwrap().to_vec1::<f32>().unwrap(), vec![1.5, 2.5, -1.0]);
        let q = model.tensor("q/weight", &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(q, vec![vec![1.0, -1.0], vec![1.0, 0.0]]);
        assert_eq!(model.scalar("num_heads").unwrap(), 6);
        assert_eq!(model.scalar("flag").unwrap(), 1);
        assert!(model.scalar("a/f32").is_err());
        assert!(model.tensor("nope", &Device::Cpu).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = write_model_bin(
            &[("w", vec![4, 3], 4, f16_bytes(&[0.25; 12])), ("n", vec![], 2, 4i16.to_le_bytes().to_vec())],
            &[("alias", "w")],
        );
        assert!(Ct2Model::from_bytes("whole", bytes.clone()).is_ok());
        for cut in 0..bytes.len() {
            let err = Ct2Model::from_bytes("cut", bytes[..cut].to_vec()).err();
            assert!(err.is_some(), "a file cut at {cut} bytes was accepted");
        }
    }

    #[test]
    fn lying_headers_are_refused_before_allocating() {
        let mut lie = write_model_bin(&[("w", vec![2], 4, f16_bytes(&[1.0, 2.0]))], &[]);
        // Make the shape claim 2^32-1 elements while the byte count stays 4.
        let at = lie.windows(4).position(|w| w == 2u32.to_le_bytes()).unwrap();
        lie[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = Ct2Model::from_bytes("lie", lie).err().unwrap().to_string();
        assert!(err.contains("does not match its shape"), "{err}");

        let mut many = 6u32.to_le_bytes().to_vec();
        many.extend_from_slice(&[2, 0, b'x', 0]);
        many.extend_from_slice(&1u32.to_le_bytes());
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Ct2Model::from_bytes("many", many).err().unwrap().to_string().contains("variables"));

        let err = Ct2Model::from_bytes("text", b"not a model at all".to_vec()).err().unwrap().to_string();
        assert!(err.contains("format version"), "{err}");
    }
}
