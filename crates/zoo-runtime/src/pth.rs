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
        let mut stack = Stack::empty();
        stack.read_loop(&mut std::io::BufReader::new(zip.by_name(&pickle).map_err(candle_core::Error::wrap)?))?;
        let Object::Dict(entries) = state_dict(stack.finalize()?) else { continue };
        for (name, value) in entries {
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
            let size = dims.iter().product::<usize>() * info.dtype.size_in_bytes();
            let mut data = zip.by_name(&info.path).map_err(candle_core::Error::wrap)?;
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
