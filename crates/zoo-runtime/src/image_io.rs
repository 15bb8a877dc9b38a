//! Decoding images from user files: format sniffed from the bytes (not the name), EXIF
//! orientation applied, and the size checked from the header before any pixel is allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Error, Result};
use crate::task::{Input, InputKind, InputSpec, ReadLimit, TaskOption};

/// The largest image zoo decodes by default: 100 megapixels (a 10000x10000 photo, ~400 MB as
/// RGBA8). Larger headers are refused before decoding.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// What a task that reads pictures takes.
pub const INPUT: InputSpec = InputSpec {
    description: "image files (JPEG, PNG, WebP, BMP, GIF), folders of them, globs, or - for stdin",
    extensions: IMAGE_EXTENSIONS,
    stdin: true,
    required: true,
    kind: InputKind::Image,
};

/// The `--max-pixels` option of every task that reads pictures; [`decode`] takes its value.
pub const MAX_PIXELS_OPTION: TaskOption = TaskOption {
    name: "max-pixels",
    value_name: Some("N"),
    help: "Refuse images with more pixels than this (read from the header, before decoding)",
    default: Some("100000000"),
};

/// A small grey PNG, for warming a vision model up.
pub fn warmup_input() -> Input {
    let picture = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128])));
    let mut bytes = Vec::new();
    picture.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).expect("a PNG encodes in memory");
    Input::bytes("warm-up.png", bytes)
}

/// The most bytes an image file within `max_pixels` may take: 8 a pixel (16-bit RGBA stored
/// uncompressed, as BMP and PNG allow) and room for metadata, so one flag raises both limits.
pub fn read_limit(max_pixels: u64) -> ReadLimit {
    ReadLimit { max_bytes: max_pixels.saturating_mul(8).saturating_add(64 << 20), raised_by: "--max-pixels" }
}

pub fn decode(input: &Input, max_pixels: u64) -> Result<DynamicImage> {
    let bytes = input.read(read_limit(max_pixels))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 40x20 JPEG, red on the left half and blue on the right, with an EXIF block saying
    /// "rotate 90 degrees clockwise to display" (orientation 6), as phones write portrait photos.
    fn rotated_jpeg() -> Vec<u8> {
        let image =
            image::RgbImage::from_fn(
                40,
                20,
                |x, _| if x < 20 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) },
            );
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&image).unwrap();
        let mut exif = b"Exif\0\0II\x2a\0\x08\0\0\0".to_vec(); // TIFF header, little-endian, IFD at 8
        exif.extend([1, 0]); // one entry
        exif.extend([0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]); // Orientation (0x0112), SHORT, 1, value 6
        exif.extend([0, 0, 0, 0]); // no next IFD
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend(((exif.len() + 2) as u16).to_be_bytes());
        app1.extend(exif);
        [&jpeg[..2], &app1, &jpeg[2..]].concat()
    }

    #[test]
    fn exif_orientation_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portrait.jpg");
        std::fs::write(&path, rotated_jpeg()).unwrap();
        let image = decode(&Input::file(&path), DEFAULT_MAX_PIXELS).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (20, 40), "rotated to portrait");
        // Turned clockwise, the left (red) half is now on top.
        let top = image.get_pixel(10, 5).0;
        let bottom = image.get_pixel(10, 35).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }

    #[test]
    fn a_misnamed_file_is_read_by_its_content_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let misnamed = dir.path().join("photo.gif");
        std::fs::write(&misnamed, rotated_jpeg()).unwrap();
        assert!(decode(&Input::file(&misnamed), DEFAULT_MAX_PIXELS).is_ok());
        let garbage = dir.path().join("photo.png");
        std::fs::write(&garbage, b"GIF89a but not really").unwrap();
        let err = decode(&Input::file(&garbage), DEFAULT_MAX_PIXELS).unwrap_err().to_string();
        assert!(err.contains("photo.png"), "{err}");
    }
}
