//! Reading a style model's weights: the catalogue's bundled models, and the user's own files —
//! a TransformerNet (or another of the three networks) as safetensors or a zip-format PyTorch
//! `.pth`, named as a file or a folder. Which network a file holds is told by its tensor names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use zoo_runtime::model::read_weights;
use zoo_runtime::{Error, Model, Result};

use crate::network::StyleNet;
use crate::predictor::StylePredictor;

/// Catalogue architectures.
pub const MULTISTYLE: &str = "multistyle26";
pub const MAGENTA: &str = "magenta-arbitrary";

const MULTISTYLE_FILE: &str = "multistyle26.safetensors";
const STYLE_NAMES_FILE: &str = "styles.txt";
const PREDICTOR_FILE: &str = "style_predict.safetensors";
const TRANSFORM_FILE: &str = "style_transform.safetensors";
/// Extensions of weights files looked for in a user's folder.
const WEIGHT_EXTENSIONS: &[&str] = &["safetensors", "pth", "pt", "model", "ckpt"];

/// A network ready to style, with what chooses its style.
pub struct Loaded {
    pub net: StyleNet,
    /// Names of the built-in styles (multistyle26).
    pub style_names: Option<Vec<String>>,
    /// The style predictor (Magenta).
    pub predictor: Option<Box<StylePredictor>>,
}

pub fn load(model: &Model, device: &Device) -> Result<Loaded> {
    let bad = |e: candle_core::Error| Error::model(&model.id, e);
    match model.architecture() {
        Some(MULTISTYLE) => {
            let vb = model.var_builder(MULTISTYLE_FILE, DType::F32, device)?;
            let net = StyleNet::multistyle(&vb).map_err(bad)?;
            let names = style_names(&model.file(STYLE_NAMES_FILE)?.text()?, net.style_size, &model.id)?;
            Ok(Loaded { net, style_names: Some(names), predictor: None })
        }
        Some(MAGENTA) => {
            let predictor =
                StylePredictor::load(&model.var_builder(PREDICTOR_FILE, DType::F32, device)?).map_err(bad)?;
            let net = StyleNet::magenta(&model.var_builder(TRANSFORM_FILE, DType::F32, device)?).map_err(bad)?;
            check_style_size(&net, &predictor, &model.id)?;
            Ok(Loaded { net, style_names: None, predictor: Some(Box::new(predictor)) })
        }
        Some(other) => Err(Error::model(&model.id, format!("style transfer does not run architecture '{other}'"))),
        None => match model.local_path() {
            Some(path) if path.is_file() => from_file(path, device, &model.id),
            Some(dir) => from_folder(dir, device, &model.id),
            None => {
                let file = model.file("model.safetensors")?;
                let bytes = file.bytes()?;
                let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(bad)?;
                from_tensors(tensors, device, &model.id, None)
            }
        },
    }
}

fn check_style_size(net: &StyleNet, predictor: &StylePredictor, id: &str) -> Result<()> {
    if net.style_size != predictor.size() {
        return Err(Error::model(
            id,
            format!("the predictor gives {}-d styles, the transformer takes {}-d", predictor.size(), net.style_size),
        ));
    }
    Ok(())
}

/// One name per line, in style order.
fn style_names(text: &str, count: usize, id: &str) -> Result<Vec<String>> {
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if names.len() != count {
        return Err(Error::model(id, format!("{} style names for {count} styles", names.len())));
    }
    Ok(names)
}

fn from_folder(dir: &Path, device: &Device, id: &str) -> Result<Loaded> {
    let (predictor, transform) = (dir.join(PREDICTOR_FILE), dir.join(TRANSFORM_FILE));
    if predictor.is_file() && transform.is_file() {
        let predictor = StylePredictor::load(&vb_of(read_weights(&predictor, device, id)?, device))
            .map_err(|e| Error::model(id, e))?;
        let net = StyleNet::magenta(&vb_of(read_weights(&transform, device, id)?, device))
            .map_err(|e| Error::model(id, e))?;
        check_style_size(&net, &predictor, id)?;
        return Ok(Loaded { net, style_names: None, predictor: Some(Box::new(predictor)) });
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [one] => from_file(one, device, id),
        [] => Err(Error::model(id, format!("no weights file (.safetensors or .pth) in {}", dir.display()))),
        many => Err(Error::model(
            id,
            format!("{} weights files in {}; name one with --model {}", many.len(), dir.display(), many[0].display()),
        )),
    }
}

fn from_file(path: &Path, device: &Device, id: &str) -> Result<Loaded> {
    let tensors = read_weights(path, device, id)?;
    let names = path.parent().map(|d| d.join(STYLE_NAMES_FILE)).filter(|p| p.is_file());
    from_tensors(tensors, device, id, names.as_deref())
}

fn vb_of(tensors: HashMap<String, Tensor>, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_tensors(tensors, DType::F32, device)
}

/// Tells the network by its tensor names.
fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device, id: &str, names: Option<&Path>) -> Result<Loaded> {
    let bad = |e: candle_core::Error| Error::model(id, e);
    if tensors.contains_key("conv1.conv2d.weight") {
        let net = StyleNet::transformer_net(&vb_of(tensors, device)).map_err(bad)?;
        return Ok(Loaded { net, style_names: None, predictor: None });
    }
    if tensors.contains_key("contract.0.w") {
        let net = StyleNet::multistyle(&vb_of(tensors, device)).map_err(bad)?;
        let names = match names {
            Some(path) => {
                style_names(&std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?, net.style_size, id)?
            }
            None => (0..net.style_size).map(|i| format!("style-{i}")).collect(),
        };
        return Ok(Loaded { net, style_names: Some(names), predictor: None });
    }
    if tensors.contains_key("transformer/contract/conv1.weight") {
        return Err(Error::model(
            id,
            format!("a Magenta transformer needs its style predictor: name a folder holding {PREDICTOR_FILE} and {TRANSFORM_FILE}"),
        ));
    }
    Err(Error::model(
        id,
        "not a style network zoo knows: expected pytorch/examples TransformerNet names (conv1.conv2d.weight, in1.weight, res1..5, deconv1..3) or multistyle26's",
    ))
}
