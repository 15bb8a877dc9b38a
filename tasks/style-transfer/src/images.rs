//! Pictures in and out: scaling down to `--max-size`, splitting off alpha, padding to the size the
//! networks need (reflection, bottom and right) and cropping back exactly, and encoding by the
//! output file's extension.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{imageops::FilterType, DynamicImage, GrayImage, RgbImage};
use zoo_runtime::{Error, Result};

use crate::layers::reflect_pad;
use crate::network::SIZE_MULTIPLE;

/// Scales the longest side down to `max_size` (never up); 0 means no limit.
pub fn limit_size(image: DynamicImage, max_size: u32) -> DynamicImage {
    let longest = image.width().max(image.height());
    if max_size == 0 || longest <= max_size {
        return image;
    }
    let scale = f64::from(max_size) / f64::from(longest);
    let w = ((f64::from(image.width()) * scale).round() as u32).max(1);
    let h = ((f64::from(image.height()) * scale).round() as u32).max(1);
    image.resize_exact(w, h, FilterType::Lanczos3)
}

/// The alpha channel, when the picture has one that is not fully opaque.
pub fn alpha(image: &DynamicImage) -> Option<GrayImage> {
    if !image.color().has_alpha() {
        return None;
    }
    let rgba = image.to_rgba8();
    let (w, h) = rgba.dimensions();
    let alpha = GrayImage::from_raw(w, h, rgba.pixels().map(|p| p.0[3]).collect()).expect("w*h values");
    alpha.pixels().any(|p| p.0[0] != 255).then_some(alpha)
}

/// (1, 3, H', W') in 0..1 on `device`, H' and W' the next multiples of [`SIZE_MULTIPLE`], the extra
/// rows and columns reflected from the picture so the network sees no hard edge there.
pub fn to_tensor(rgb: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let data: Vec<f32> = rgb.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
    let x = Tensor::from_vec(data, (1, h, w, 3), device)?.permute((0, 3, 1, 2))?.contiguous()?;
    let pad = |n: usize| n.next_multiple_of(SIZE_MULTIPLE) - n;
    reflect_pad(&x, 0, pad(h), 0, pad(w))
}

/// The top-left `width` x `height` of a (1, 3, H', W') 0..1 output as 8-bit RGB.
pub fn to_rgb(y: &Tensor, width: u32, height: u32) -> candle_core::Result<RgbImage> {
    let y = y.narrow(2, 0, height as usize)?.narrow(3, 0, width as usize)?;
    let hwc = y.squeeze(0)?.permute((1, 2, 0))?.contiguous()?;
    let values: Vec<f32> = hwc.flatten_all()?.to_vec1()?;
    let bytes = values.into_iter().map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect();
    Ok(RgbImage::from_raw(width, height, bytes).expect("width*height*3 values"))
}

/// Puts `alpha` back on a styled picture.
pub fn with_alpha(rgb: RgbImage, alpha: Option<&GrayImage>) -> DynamicImage {
    match alpha {
        None => DynamicImage::ImageRgb8(rgb),
        Some(alpha) => {
            let mut rgba = DynamicImage::ImageRgb8(rgb).to_rgba8();
            for (p, a) in rgba.pixels_mut().zip(alpha.pixels()) {
                p.0[3] = a.0[0];
            }
            DynamicImage::ImageRgba8(rgba)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
}

impl Format {
    /// The format an output path asks for by its extension.
    pub fn of(path: &Path) -> std::result::Result<Format, String> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "png" => Ok(Format::Png),
            "jpg" | "jpeg" => Ok(Format::Jpeg),
            "" => Err("the file name needs an extension, .png or .jpg, to choose the format".into()),
            other => Err(format!("cannot write .{other} files; use .png or .jpg")),
        }
    }
}

/// The encoded file; JPEG has no alpha, so a transparent picture loses it there (PNG keeps it).
pub fn encode(image: &DynamicImage, format: Format, quality: u8, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let result = match format {
        Format::Png => image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png),
        Format::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
            DynamicImage::ImageRgb8(image.to_rgb8()).write_with_encoder(encoder)
        }
    };
    result.map_err(|e| Error::input(path, format!("could not encode the picture: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_a_multiple_of_four_and_crops_back_exactly() {
        let rgb = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 9]));
        let x = to_tensor(&rgb, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), [1, 3, 8, 8]);
        // The padding reflects: column 7 mirrors column 5, row 5 mirrors row 3.
        let v = |c: usize, y: usize, x_: usize| x.get(0).unwrap().get(c).unwrap().get(y).unwrap().get(x_).unwrap();
        assert_eq!(v(0, 0, 7).to_scalar::<f32>().unwrap(), 150.0 / 255.0);
        assert_eq!(v(1, 5, 0).to_scalar::<f32>().unwrap(), 120.0 / 255.0);
        assert_eq!(to_rgb(&x, 7, 5).unwrap(), rgb);
    }

    #[test]
    fn limits_the_longest_side_only_downwards() {
        let image = DynamicImage::new_rgb8(400, 100);
        let small = limit_size(image.clone(), 200);
        assert_eq!((small.width(), small.height()), (200, 50));
        assert_eq!(limit_size(image.clone(), 0).width(), 400);
        assert_eq!(limit_size(image, 1000).width(), 400);
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(Format::of(Path::new("a/b.PNG")), Ok(Format::Png));
        assert_eq!(Format::of(Path::new("b.jpeg")), Ok(Format::Jpeg));
        assert!(Format::of(Path::new("b.gif")).is_err());
        assert!(Format::of(Path::new("b")).is_err());
    }
}
