use candle_core::Device;

use crate::error::{Error, Result};

/// The device named on the command line: `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, n)) => {
            let n = n.parse::<usize>().map_err(|_| Error::InvalidOption {
                option: "device".into(),
                value: name.into(),
                reason: "the device number is not a number".into(),
            })?;
            (kind, n)
        }
        None => (name, 0),
    };
    let unavailable = |e: candle_core::Error| {
        Error::Device(format!(
            "{name} is not available: {e} (zoo must be built with `--features {kind}` and the driver present)"
        ))
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(ordinal).map_err(unavailable),
        "metal" => Device::new_metal(ordinal).map_err(unavailable),
        _ => Err(Error::InvalidOption {
            option: "device".into(),
            value: name.into(),
            reason: "expected cpu, cuda, cuda:N or metal".into(),
        }),
    }
}
