//! zoo's shared runtime: the task contract and registry, the model catalogue, model resolution
//! and Hub downloads into the standard Hugging Face cache, weights loading, devices, inputs, errors.

pub mod bundled;
pub mod catalog;
pub mod cpu;
pub mod device;
pub mod draw;
pub mod error;
pub mod explain;
pub mod fsutil;
pub mod hub;
pub mod image_io;
pub mod inputs;
pub mod model;
pub mod progress;
pub mod pth;
pub mod task;
#[doc(hidden)]
pub mod test_support;
pub mod tfjs;

pub use catalog::{Catalog, CatalogEntry};
pub use error::{Error, Result};
pub use explain::Explains;
pub use hub::HubSettings;
pub use model::{Model, ModelFile, ModelRef};
pub use task::{
    Context, ImageFormat, Input, InputKind, InputSource, InputSpec, Outputs, Prediction, PredictionResult, ReadLimit,
    Registry, Runner, Task, TaskArgs, TaskOption, RETURNED,
};

// Re-exported so task crates build on the same versions.
pub use candle_core;
pub use candle_nn;
pub use image;
