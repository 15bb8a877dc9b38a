//! Decoding images from user files: format sniffed from the bytes (not the name), EXIF
//! orientation applied, and the size checked from the header before any pixel is allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Error, Result};
use crate::task::Input;

/// The largest image zoo decodes by default: 100 megapixels (a 10000x10000 photo, ~400 MB as
/// RGBA8). Larger headers are refused before decoding.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

pub fn decode(input: &Input, max_pixels: u64) -> Result<DynamicImage> {
    let bytes = input.read()?;
    let path = input.path();
    let reader = ImageReader::new(Cursor::new(&bytes[..])).with_guessed_format().map_err(|e| Error::input(path, e))?;
    let Some(format) = reader.format() else {
        return Err(Error::input(path, "not an image zoo can read (JPEG, PNG, WebP, BMP or GIF)"));
    };
    let name = format!("{format:?}").to_uppercase();
    let mut limits = image::Limits::default();
    // Decoders also check this while allocating, which catches formats whose header lies.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    let mut reader = reader;
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| Error::input(path, describe(&name, e)))?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(Error::input(
            path,
            format!(
                "{name} image of {w}x{h} pixels is over the limit of {} megapixels (raise it with --max-pixels)",
                max_pixels / 1_000_000
            ),
        ));
    }
    if pixels == 0 {
        return Err(Error::input(path, format!("{name} image has no pixels ({w}x{h})")));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| Error::input(path, describe(&name, e)))?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn describe(format: &str, e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(_) => format!("{format} image is too large to decode within zoo's memory limit"),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("truncated {format} file (the data ends early)")
        }
        other => format!("corrupt or unsupported {format} data: {other}"),
    }
}
