//! Speech recognition with Whisper.

pub mod audio;
