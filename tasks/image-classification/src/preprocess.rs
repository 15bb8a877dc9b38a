//! Turning a decoded image into the network's input, as each model family was trained.

use candle_core::{Device, Result, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

/// How a model wants its pixels.
#[derive(Debug, Clone)]
pub struct Preprocess {
    pub resize: Resize,
    pub filter: FilterType,
    /// Per channel: x = (pixel - offset) / scale, with pixel in 0..255.
    pub offset: [f32; 3],
    pub scale: [f32; 3],
    /// NHWC (true) or NCHW (false).
    pub channels_last: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Resize {
    /// Shorter side to `shorter`, then the centre `crop` x `crop` (timm / TF eval).
    ShorterThenCrop { shorter: u32, crop: u32 },
    /// Straight to height x width, aspect ignored (Hugging Face ViT image processors).
    Exact { height: u32, width: u32 },
}

impl Preprocess {
    /// EfficientNet-Lite as TensorFlow evaluated it: shorter side 256 (= 224 / 0.875), centre crop
    /// 224, bilinear with antialias, (x - 127) / 128.
    pub fn efficientnet_lite(crop: u32, crop_pct: f32) -> Self {
        Preprocess {
            resize: Resize::ShorterThenCrop { shorter: (crop as f32 / crop_pct).round() as u32, crop },
            filter: FilterType::Triangle,
            offset: [127.0; 3],
            scale: [128.0; 3],
            channels_last: true,
        }
    }

    pub fn output_hw(&self) -> (u32, u32) {
        match self.resize {
            Resize::ShorterThenCrop { crop, .. } => (crop, crop),
            Resize::Exact { height, width } => (height, width),
        }
    }

    /// The part of a `width` x `height` picture that [`Self::to_rgb`] keeps, as fractions of its
    /// sides: [left, top, width, height].
    pub fn source_region(&self, [width, height]: [u32; 2]) -> [f64; 4] {
        match self.resize {
            Resize::ShorterThenCrop { shorter, crop } => {
                let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
                let r = f64::from(shorter.max(crop)) / w.min(h);
                let (fw, fh) = (
                    (f64::from(crop) / (w * r).round().max(1.0)).min(1.0),
                    (f64::from(crop) / (h * r).round().max(1.0)).min(1.0),
                );
                [(1.0 - fw) / 2.0, (1.0 - fh) / 2.0, fw, fh]
            }
            Resize::Exact { .. } => [0.0, 0.0, 1.0, 1.0],
        }
    }

    pub fn to_rgb(&self, image: &DynamicImage) -> RgbImage {
        let rgb = image.to_rgb8();
        match self.resize {
            Resize::ShorterThenCrop { shorter, crop } => {
                let shorter = shorter.max(crop);
                let (w, h) = rgb.dimensions();
                let r = shorter as f64 / w.min(h) as f64;
                let nw = (w as f64 * r).round().min(u32::MAX as f64) as u32;
                let nh = (h as f64 * r).round().min(u32::MAX as f64) as u32;
                let (nw, nh) = (nw.max(shorter), nh.max(shorter));
                if u64::from(nw) * u64::from(nh) > 16 * u64::from(shorter) * u64::from(shorter) {
                    // A panorama or a strip: resizing all of it would dwarf the crop (a 50000x1
                    // image would become 12.8 M pixels wide). Take the source region the crop
                    // covers, with a margin for the filter, and resize only that.
                    let keep_w = ((f64::from(crop) + 4.0) / r).ceil().min(f64::from(w)) as u32;
                    let keep_h = ((f64::from(crop) + 4.0) / r).ceil().min(f64::from(h)) as u32;
                    let region =
                        image::imageops::crop_imm(&rgb, (w - keep_w) / 2, (h - keep_h) / 2, keep_w, keep_h).to_image();
                    let (rw, rh) = (
                        ((f64::from(keep_w) * r).round() as u32).max(crop),
                        ((f64::from(keep_h) * r).round() as u32).max(crop),
                    );
                    let resized = image::imageops::resize(&region, rw, rh, self.filter);
                    return image::imageops::crop_imm(&resized, (rw - crop) / 2, (rh - crop) / 2, crop, crop)
                        .to_image();
                }
                let resized = image::imageops::resize(&rgb, nw, nh, self.filter);
                let (left, top) = ((nw - crop) / 2, (nh - crop) / 2);
                image::imageops::crop_imm(&resized, left, top, crop, crop).to_image()
            }
            Resize::Exact { height, width } => image::imageops::resize(&rgb, width, height, self.filter),
        }
    }

    /// A (1, H, W, 3) or (1, 3, H, W) f32 tensor.
    pub fn tensor(&self, rgb: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = rgb.dimensions();
        let (w, h) = (w as usize, h as usize);
        let mut data = vec![0f32; w * h * 3];
        for (i, px) in rgb.pixels().enumerate() {
            for ch in 0..3 {
                let v = (px.0[ch] as f32 - self.offset[ch]) / self.scale[ch];
                if self.channels_last {
                    data[i * 3 + ch] = v;
                } else {
                    data[ch * w * h + i] = v;
                }
            }
        }
        if self.channels_last {
            Tensor::from_vec(data, (1, h, w, 3), device)
        } else {
            Tensor::from_vec(data, (1, 3, h, w), device)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 400x300 photo scaled to a shorter side of 256 and centre-cropped to 224 keeps 224/256
    /// of its height and 262.5 of its 400 pixels across (224 at 256/300 scale), centred.
    #[test]
    fn the_source_region_is_the_centre_crop_in_the_photos_fractions() {
        let [left, top, width, height] = Preprocess::efficientnet_lite(224, 0.875).source_region([400, 300]);
        assert!((height - 0.875).abs() < 1e-9 && (top - 0.0625).abs() < 1e-9, "{top} {height}");
        assert!((width * 400.0 - 262.5).abs() < 0.5 && (left + width / 2.0 - 0.5).abs() < 1e-9, "{left} {width}");
        let exact = Preprocess {
            resize: Resize::Exact { height: 224, width: 224 },
            ..Preprocess::efficientnet_lite(224, 0.875)
        };
        assert_eq!(exact.source_region([400, 300]), [0.0, 0.0, 1.0, 1.0]);
    }
}
