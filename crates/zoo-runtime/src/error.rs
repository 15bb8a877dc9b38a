use std::path::PathBuf;

/// Everything that can go wrong in zoo's libraries. Each variant says what the user can do about it;
/// [`Error::is_usage`] separates "you asked for something that does not exist" (exit 2) from
/// failures while doing the work (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown task '{name}'; known tasks: {known}")]
    UnknownTask { name: String, known: String },

    #[error("unknown model '{reference}': {hint}")]
    UnknownModel { reference: String, hint: String },

    #[error("model '{model}' is for task '{model_task}', not '{task}'")]
    WrongTask { model: String, model_task: String, task: String },

    #[error("invalid value '{value}' for --{option}: {reason}")]
    InvalidOption { option: String, value: String, reason: String },

    #[error("{0}")]
    Usage(String),

    /// A user's input file (image, audio, text) that cannot be used.
    #[error("{}: {reason}", path.display())]
    Input { path: PathBuf, reason: String },

    /// A file zoo had to read or write and could not.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("model '{model}' is not fully downloaded ({file} is missing from the cache) and downloads are off (--offline or HF_HUB_OFFLINE); fetch it first with `zoo download {model}`")]
    NotCached { model: String, file: String },

    /// `file` names the file and where it comes from: "model.safetensors of owner/name@rev".
    #[error("could not download {file}: {reason}")]
    Download { file: String, reason: String },

    #[error("{file} failed its checksum: expected sha256 {expected}, got {actual}; the file was removed from the cache, run the command again to fetch it anew")]
    Checksum { file: String, expected: String, actual: String },

    /// Weights or configuration that do not describe a model zoo can run.
    #[error("model '{model}': {reason}")]
    Model { model: String, reason: String },

    #[error("the model catalogue is invalid: {0}")]
    Catalog(String),

    #[error("device: {0}")]
    Device(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// True when the command line asked for something that does not exist or cannot be parsed,
    /// which the CLI reports with exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::UnknownTask { .. }
                | Error::UnknownModel { .. }
                | Error::WrongTask { .. }
                | Error::InvalidOption { .. }
                | Error::Usage(_)
        )
    }

    pub fn input(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::Input { path: path.into(), reason: reason.to_string() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn model(model: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Model { model: model.into(), reason: reason.to_string() }
    }
}

/// What a candle error says, without the file path and backtrace candle wraps around it: zoo's
/// messages name the file themselves, and are one line.
pub fn candle_reason(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithPath { inner, .. } | candle_core::Error::WithBacktrace { inner, .. } => {
            candle_reason(inner)
        }
        other => other.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
