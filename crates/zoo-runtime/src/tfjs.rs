//! TensorFlow.js weight files: a JSON manifest naming each tensor (name, shape, dtype, optional
//! uint8/uint16/float16 quantisation) and binary shards holding them back to back, in manifest
//! order, with no header or alignment (tfjs-core's `io.decodeWeights`). Quantised values are
//! dequantised as tfjs does it, `q * scale + min` in double precision stored as f32, so a network
//! read here computes with the numbers tfjs computes with.

use std::collections::HashMap;

use serde::Deserialize;

/// One tensor of a manifest, as f32 (int32 graph constants too), in its stored (TensorFlow) layout.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

#[derive(Deserialize)]
struct Group {
    paths: Vec<String>,
    weights: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    quantization: Option<Quantization>,
}

#[derive(Deserialize)]
struct Quantization {
    dtype: String,
    scale: Option<f64>,
    min: Option<f64>,
}

/// Every tensor `manifest` describes, by name; `shard` gives the bytes of each path the manifest
/// names. A manifest that does not account for its shards' bytes exactly is refused: it is not
/// the file it claims to be.
pub fn read(
    manifest: &str,
    mut shard: impl FnMut(&str) -> Result<Vec<u8>, String>,
) -> Result<HashMap<String, Tensor>, String> {
    let groups: Vec<Group> = serde_json::from_str(manifest).map_err(|e| format!("not a tfjs weights manifest: {e}"))?;
    let mut tensors = HashMap::new();
    for group in groups {
        // What the tensors take, from the manifest alone: shards are read only up to it.
        let mut needed = 0usize;
        for entry in &group.weights {
            let width = match (&entry.quantization, entry.dtype.as_str()) {
                (Some(q), _) if q.dtype == "uint8" => 1,
                (Some(_), _) => 2,
                (None, _) => 4,
            };
            needed = entry
                .shape
                .iter()
                .try_fold(width, |n: usize, &d| n.checked_mul(d))
                .and_then(|n| n.checked_add(needed))
                .ok_or_else(|| format!("{}: shape {:?} is too large", entry.name, entry.shape))?;
        }
        let mut bytes = Vec::new();
        for (i, path) in group.paths.iter().enumerate() {
            if group.paths[..i].contains(path) {
                return Err(format!("shard {path} is listed twice"));
            }
            bytes.extend(shard(path)?);
            if bytes.len() > needed {
                return Err(format!(
                    "the shards hold {} bytes past the tensors the manifest lists",
                    bytes.len() - needed
                ));
            }
        }
        let mut at = 0usize;
        for entry in group.weights {
            let count = entry
                .shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| format!("{}: shape {:?} is too large", entry.name, entry.shape))?;
            let (width, decode): (usize, fn(&[u8]) -> f64) = match (&entry.quantization, entry.dtype.as_str()) {
                (Some(q), _) if q.dtype == "uint8" => (1, |b| f64::from(b[0])),
                (Some(q), _) if q.dtype == "uint16" => (2, |b| f64::from(u16::from_le_bytes([b[0], b[1]]))),
                (Some(q), _) if q.dtype == "float16" => {
                    (2, |b| f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32()))
                }
                (Some(q), _) => return Err(format!("{}: unknown quantisation {}", entry.name, q.dtype)),
                (None, "float32") => (4, |b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                (None, "int32") => (4, |b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                (None, other) => return Err(format!("{}: unsupported dtype {other}", entry.name)),
            };
            let end = count.checked_mul(width).and_then(|n| n.checked_add(at)).filter(|&end| end <= bytes.len());
            let Some(end) = end else {
                return Err(format!("{}: the shards end before this tensor does", entry.name));
            };
            // Only uint8/uint16 codes are affine; float16 is stored as itself.
            let affine = entry.quantization.as_ref().filter(|q| q.dtype != "float16");
            let (scale, min) = match affine {
                Some(q) => match (q.scale, q.min) {
                    (Some(scale), Some(min)) if scale.is_finite() && min.is_finite() => (scale, min),
                    _ => return Err(format!("{}: quantisation without a finite scale and min", entry.name)),
                },
                None => (1.0, 0.0),
            };
            let int = entry.dtype == "int32";
            let values: Vec<f32> = bytes[at..end]
                .chunks_exact(width)
                .map(|b| {
                    let v = decode(b) * scale + min;
                    (if int { v.round() } else { v }) as f32
                })
                .collect();
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!("{}: value {bad} is not a finite number", entry.name));
            }
            at = end;
            tensors.insert(entry.name, Tensor { shape: entry.shape, values });
        }
        if at != bytes.len() {
            return Err(format!("the shards hold {} bytes past the tensors the manifest lists", bytes.len() - at));
        }
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(weights: &str) -> String {
        format!(r#"[{{"paths": ["a.bin"], "weights": [{weights}]}}]"#)
    }

    #[test]
    fn tensors_are_read_in_order_and_dequantised_as_tfjs_does() {
        let text = manifest(
            r#"{"name": "q", "shape": [2, 2], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
               {"name": "f", "shape": [2], "dtype": "float32"},
               {"name": "i", "shape": [], "dtype": "int32", "quantization": {"dtype": "uint8", "scale": 0.3, "min": 0.0}},
               {"name": "h", "shape": [1], "dtype": "float32", "quantization": {"dtype": "float16"}}"#,
        );
        let mut bytes = vec![0u8, 1, 2, 255];
        bytes.extend(1.5f32.to_le_bytes());
        bytes.extend((-2.25f32).to_le_bytes());
        bytes.push(5);
        bytes.extend(0x3c00u16.to_le_bytes()); // 1.0 in half precision
        let tensors = read(&text, |path| {
            assert_eq!(path, "a.bin");
            Ok(bytes.clone())
        })
        .unwrap();
        assert_eq!(tensors["q"].shape, [2, 2]);
        assert_eq!(tensors["q"].values, [-1.0, -0.5, 0.0, 126.5]);
        assert_eq!(tensors["f"].values, [1.5, -2.25]);
        assert_eq!(tensors["i"].values, [2.0], "int32 constants are rounded (5 * 0.3 = 1.5 -> 2)");
        assert_eq!(tensors["h"].values, [1.0]);
    }

    #[test]
    fn shards_that_do_not_match_the_manifest_are_refused() {
        let text = manifest(r#"{"name": "f", "shape": [2], "dtype": "float32"}"#);
        let short = read(&text, |_| Ok(vec![0u8; 7])).unwrap_err();
        assert!(short.contains("end before"), "{short}");
        let long = read(&text, |_| Ok(vec![0u8; 9])).unwrap_err();
        assert!(long.contains("1 bytes past"), "{long}");
        let huge = manifest(r#"{"name": "f", "shape": [4294967296, 4294967296], "dtype": "float32"}"#);
        assert!(read(&huge, |_| Ok(vec![])).unwrap_err().contains("too large"));
        let twice = r#"[{"paths": ["a.bin", "a.bin"], "weights": [{"name": "f", "shape": [2], "dtype": "float32"}]}]"#;
        assert!(read(twice, |_| Ok(vec![0u8; 4])).unwrap_err().contains("listed twice"));
        let nan = read(&text, |_| Ok([f32::NAN.to_le_bytes(), 0f32.to_le_bytes()].concat())).unwrap_err();
        assert!(nan.contains("not a finite"), "{nan}");
        assert!(read("{}", |_| Ok(vec![])).unwrap_err().contains("not a tfjs weights manifest"));
        let missing = read(&text, |path| Err(format!("{path}: no such file"))).unwrap_err();
        assert_eq!(missing, "a.bin: no such file");
    }
}
