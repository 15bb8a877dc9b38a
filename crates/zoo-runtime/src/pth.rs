//! PyTorch zip checkpoints (`torch.save` since 1.6) read from bytes, so that a bundled state dict
//! (embedded in the binary) loads as a downloaded one does. candle's own reader takes a path and
//! reopens the archive for every tensor; the pickle itself is still read by candle's interpreter,
//! which only builds tensor descriptions and never runs code.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Tensor};

/// Every tensor of the state dict in `bytes`, by name, on `device`. A `module.` prefix (what
/// `nn.DataParallel` adds) is dropped.
pub fn read(bytes: &[u8], device: &Device) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(candle_core::Error::wrap)?;
    let names = zip.file_names().map(|name| name.map(|n| n.into_owned())).collect::<Result<Vec<_>, _>>();
    let pickles: Vec<String> =
        names.map_err(candle_core::Error::wrap)?.into_iter().filter(|name| name.ends_with("data.pkl")).collect();
    let mut tensors = HashMap::new();
    for pickle in pickles {
        let dir = std::path::PathBuf::from(pickle.trim_end_matches(".pkl"));
        let mut program = Vec::new();
        zip.by_name(&pickle).map_err(candle_core::Error::wrap)?.read_to_end(&mut program)?;
        let mut stack = Stack::empty();
        stack.read_loop(&mut Cursor::new(&program))?;
        let Object::Dict(entries) = state_dict(stack.finalize()?) else { continue };
        for (name, value) in entries {
            // candle indexes the argument tuples without checking their length: a crafted pickle
            // would panic there, so the shape of each entry is checked first.
            if !well_formed(&value) {
                candle_core::bail!("{pickle}: an entry that is not a tensor as torch.save writes one")
            }
            let Some(info) = value.into_tensor_info(name, &dir)? else { continue };
            let layout = &info.layout;
            let fortran = layout.dims().len() > 1 && layout.is_fortran_contiguous();
            if !layout.is_contiguous() && !fortran {
                candle_core::bail!("{}: a strided tensor, which zoo does not read", info.name)
            }
            let dims: Vec<usize> = match fortran {
                // Stored column-major: read with the dimensions reversed, then turned back.
                true => layout.dims().iter().rev().copied().collect(),
                false => layout.dims().to_vec(),
            };
            let mut data = zip.by_name(&info.path).map_err(candle_core::Error::wrap)?;
            // The declared shape must fit in the bytes stored for it, checked before allocating.
            let size = dims
                .iter()
                .try_fold(info.dtype.size_in_bytes(), |n, &d| n.checked_mul(d))
                .filter(|&n| n.checked_add(layout.start_offset()).is_some_and(|end| end as u64 <= data.size()));
            let Some(size) = size else {
                candle_core::bail!(
                    "{}: a {:?} tensor larger than the {} bytes stored for it",
                    info.name,
                    layout.dims(),
                    data.size()
                )
            };
            std::io::copy(&mut data.by_ref().take(layout.start_offset() as u64), &mut std::io::sink())?;
            let mut raw = vec![0u8; size];
            data.read_exact(&mut raw)?;
            let mut tensor = Tensor::from_raw_buffer(&raw, info.dtype, &dims, &Device::Cpu)?;
            if fortran {
                tensor = tensor.permute((0..dims.len()).rev().collect::<Vec<_>>())?;
            }
            let name = info.name.strip_prefix("module.").map(str::to_string).unwrap_or(info.name);
            tensors.insert(name, tensor.to_device(device)?);
        }
    }
    Ok(tensors)
}

/// Whether `value` has the shape candle's `into_tensor_info` takes apart: torch's tensor
/// rebuild calls with their arguments (storage, offset, size, stride), or something that is not a
/// tensor call at all (skipped there).
fn well_formed(value: &Object) -> bool {
    let class = |o: &Object, module: &str, name: &str| matches!(o, Object::Class { module_name, class_name } if module_name == module && class_name == name);
    let Object::Reduce { callable, args } = value else { return true };
    let (mut callable, mut args) = (callable.as_ref(), args.as_ref());
    if class(callable, "torch._tensor", "_rebuild_from_type_v2") {
        let Object::Tuple(parts) = args else { return false };
        let [inner, _, inner_args, ..] = parts.as_slice() else { return false };
        (callable, args) = (inner, inner_args);
    } else if class(callable, "torch._utils", "_rebuild_parameter") {
        let Object::Tuple(parts) = args else { return false };
        let Some(Object::Reduce { callable: c, args: a }) = parts.first() else { return false };
        (callable, args) = (c.as_ref(), a.as_ref());
    }
    if !class(callable, "torch._utils", "_rebuild_tensor_v2") {
        return true;
    }
    let Object::Tuple(parts) = args else { return false };
    let [Object::PersistentLoad(storage), offset, Object::Tuple(size), Object::Tuple(stride), ..] = parts.as_slice()
    else {
        return false;
    };
    let small =
        |o: &Object| matches!(o, Object::Int(v) if *v >= 0) || matches!(o, Object::Long(v) if (0..1 << 40).contains(v));
    let storage_ok = matches!(storage.as_ref(), Object::Tuple(s) if s.len() >= 5);
    storage_ok && small(offset) && size.len() == stride.len() && size.iter().chain(stride).all(small)
}

/// A scripted module's pickle wraps its state dict in a `Module` build; a plain state dict is as is.
fn state_dict(object: Object) -> Object {
    if let Object::Build { callable, args } = &object {
        if let Object::Reduce { callable, .. } = callable.as_ref() {
            if matches!(callable.as_ref(), Object::Class { module_name, class_name }
                if module_name == "__torch__" && class_name == "Module")
            {
                return (**args).clone();
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-tensor checkpoint as torch.save writes it, except that the rebuild call gets only
    /// the first `arguments` of (storage, offset, size, stride) and the tensor claims `dims`.
    fn checkpoint(dims: &[u32], arguments: usize, data: &[f32]) -> Vec<u8> {
        use std::io::Write;
        let text = |p: &mut Vec<u8>, s: &str| {
            p.push(b'X');
            p.extend((s.len() as u32).to_le_bytes());
            p.extend(s.bytes());
        };
        let int = |p: &mut Vec<u8>, v: u32| {
            p.push(b'J');
            p.extend(v.to_le_bytes());
        };
        let mut p = vec![0x80, 2];
        p.extend(b"ccollections\nOrderedDict\n)R(");
        text(&mut p, "weight");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        text(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        text(&mut p, "0");
        text(&mut p, "cpu");
        int(&mut p, data.len() as u32);
        p.extend(b"tQ");
        if arguments > 1 {
            int(&mut p, 0);
        }
        if arguments > 2 {
            p.push(b'(');
            dims.iter().for_each(|&d| int(&mut p, d));
            p.push(b't');
            p.push(b'(');
            (0..dims.len()).for_each(|i| int(&mut p, dims[i + 1..].iter().product()));
            p.push(b't');
        }
        p.extend(b"tRu.");
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", stored).unwrap();
        zip.write_all(&p).unwrap();
        zip.start_file("archive/data/0", stored).unwrap();
        zip.write_all(&data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn a_checkpoint_reads_back_and_lying_ones_are_refused_without_a_panic() {
        let dev = Device::Cpu;
        let good = read(&checkpoint(&[2, 2], 4, &[1.0, 2.0, 3.0, 4.0]), &dev).unwrap();
        assert_eq!(good["weight"].to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
        // Two of the four arguments: candle would index past them.
        let short = read(&checkpoint(&[2, 2], 2, &[1.0; 4]), &dev).unwrap_err().to_string();
        assert!(short.contains("not a tensor as torch.save writes one"), "{short}");
        // A shape far larger than the 16 bytes stored, refused before any allocation.
        let huge = read(&checkpoint(&[1 << 30, 1 << 30], 4, &[1.0; 4]), &dev).unwrap_err().to_string();
        assert!(huge.contains("larger than the 16 bytes stored for it"), "{huge}");
    }
}
