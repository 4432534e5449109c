//! Images: decode any format `image` supports, apply EXIF orientation, resize the short side
//! (bicubic), centre-crop, normalise with the model's mean/std into NCHW f32.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::Deserialize;

use crate::error::InputError;

/// `[models.<vision>.preprocess]` in the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ImagePreprocess {
    pub resize_short_side: u32,
    pub crop: u32,
    pub filter: ResizeFilter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub normalize: bool,
}

impl ImagePreprocess {
    /// DINOv2's ImageNet transform, as `[models.vision.preprocess]` of the shipped manifest says:
    /// for code that runs without a manifest (fuzzing, unit tests).
    pub fn dinov2() -> ImagePreprocess {
        ImagePreprocess {
            resize_short_side: 256,
            crop: 224,
            filter: ResizeFilter::Bicubic,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            normalize: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// Catmull-Rom (a = -0.5), the kernel PIL and torchvision call bicubic.
    Bicubic,
    Bilinear,
}

impl ResizeFilter {
    fn to_image(self) -> FilterType {
        match self {
            ResizeFilter::Bicubic => FilterType::CatmullRom,
            ResizeFilter::Bilinear => FilterType::Triangle,
        }
    }
}

/// Decode bytes to an upright RGB image, refusing images over `max_pixels` before decoding.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| InputError::CorruptImage(e.to_string()))?;
    // Bound what decoders may allocate while reading headers and metadata (ICC, EXIF, text
    // chunks), before the dimensions are known: 4 bytes per pixel plus slack for 16-bit
    // formats. The pixel count itself is checked below, before any pixel is decoded.
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16));
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    reader.limits(limits.clone());
    match reader.format() {
        None => return Err(InputError::UnknownImageFormat),
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(InputError::CorruptImage(
                "truncated JPEG (no end-of-image marker)".into(),
            ))
        }
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        // Built without the other decoders (Cargo.toml): less code facing untrusted bytes.
        Some(other) => {
            return Err(InputError::UnsupportedImageFormat(
                format!("{other:?}").to_uppercase(),
            ))
        }
    }
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(InputError::ImageTooLarge {
            width,
            height,
            limit: max_pixels,
        });
    }
    decoder.set_limits(limits).map_err(image_error)?;
    let orientation = decoder.orientation().map_err(image_error)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// The JPEG decoder pads missing scan data with grey rather than failing, so check that the
/// end-of-image marker follows the first scan. Inside entropy-coded data every 0xFF is stuffed
/// (0xFF00), so 0xFFD9 after the start-of-scan can only be the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let find = |from: usize, marker: [u8; 2]| {
        bytes
            .get(from..)
            .and_then(|tail| tail.windows(2).position(|w| w == marker))
            .map(|p| p + from)
    };
    match find(0, [0xFF, 0xDA]) {
        Some(sos) => find(sos + 2, [0xFF, 0xD9]).is_some(),
        None => false,
    }
}

fn image_error(e: image::ImageError) -> InputError {
    match e {
        image::ImageError::Unsupported(u) => InputError::CorruptImage(format!("unsupported: {u}")),
        image::ImageError::Limits(l) => InputError::CorruptImage(format!("limit exceeded: {l}")),
        other => InputError::CorruptImage(other.to_string()),
    }
}

/// Resize so that the short side is `resize_short_side`, then centre-crop `crop`×`crop`.
pub fn resize_and_crop(img: &RgbImage, p: &ImagePreprocess) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h).max(1) as f64;
    let scale = f64::from(p.resize_short_side) / short;
    let (nw, nh) = if w <= h {
        (
            p.resize_short_side,
            ((h as f64) * scale).round_ties_even().max(1.0) as u32,
        )
    } else {
        (
            ((w as f64) * scale).round_ties_even().max(1.0) as u32,
            p.resize_short_side,
        )
    };
    let resized = image::imageops::resize(img, nw, nh, p.filter.to_image());
    let crop_w = p.crop.min(nw);
    let crop_h = p.crop.min(nh);
    let left = ((f64::from(nw - crop_w)) / 2.0).round_ties_even() as u32;
    let top = ((f64::from(nh - crop_h)) / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(&resized, left, top, crop_w, crop_h).to_image()
}

/// Append the image as planar CHW f32, `(x/255 - mean) / std`, to `out`.
pub fn write_nchw(img: &RgbImage, p: &ImagePreprocess, out: &mut Vec<f32>) {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let (r, rest) = out[start..].split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let planes = [r, g, b];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * p.std[c]));
    let offset: [f32; 3] = std::array::from_fn(|c| p.mean[c] / p.std[c]);
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            planes[c][i] = f32::from(px.0[c]) * scale[c] - offset[c];
        }
    }
}

/// Decode, orient, resize, crop and normalise one image.
pub fn preprocess(
    bytes: &[u8],
    p: &ImagePreprocess,
    max_pixels: u64,
    out: &mut Vec<f32>,
) -> Result<(), InputError> {
    let img = decode(bytes, max_pixels)?;
    let img = resize_and_crop(&img, p);
    if img.width() != p.crop || img.height() != p.crop {
        return Err(InputError::CorruptImage(format!(
            "image too small: {}x{} after resizing",
            img.width(),
            img.height()
        )));
    }
    write_nchw(&img, p, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ImagePreprocess {
        ImagePreprocess::dinov2()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut buf = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
            .unwrap();
        buf
    }

    #[test]
    fn landscape_is_resized_on_its_short_side_and_centre_cropped() {
        let img = decode(&png(400, 300), u64::MAX).unwrap();
        let out = resize_and_crop(&img, &params());
        assert_eq!(out.dimensions(), (224, 224));
    }

    #[test]
    fn normalisation_matches_the_imagenet_formula() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 128]));
        let mut out = Vec::new();
        write_nchw(&img, &params(), &mut out);
        let p = params();
        assert!((out[0] - (1.0 - p.mean[0]) / p.std[0]).abs() < 1e-6);
        assert!((out[2] - (0.0 - p.mean[1]) / p.std[1]).abs() < 1e-6);
        assert!((out[4] - (128.0 / 255.0 - p.mean[2]) / p.std[2]).abs() < 1e-6);
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        let err = decode(&png(300, 300), 10_000).unwrap_err();
        assert!(matches!(
            err,
            InputError::ImageTooLarge {
                width: 300,
                height: 300,
                ..
            }
        ));
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn decompression_bombs_are_refused_from_the_header_before_any_pixel_is_allocated() {
        // A 1x1 PNG whose header claims 50,000 x 50,000 (7.5 GB as RGB): if the decoder got as
        // far as allocating its pixels this would abort, not return an error.
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&50_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&50_000u32.to_be_bytes());
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let r = decode(&p, 40_000_000);
        assert!(
            matches!(
                r,
                Err(InputError::ImageTooLarge {
                    width: 50_000,
                    height: 50_000,
                    ..
                })
            ),
            "{r:?}"
        );
        // The same for a JPEG: 65,535 x 65,535 in its start-of-frame marker.
        let mut j = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(8, 8))
            .write_to(&mut Cursor::new(&mut j), image::ImageFormat::Jpeg)
            .unwrap();
        let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        j[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        let r = decode(&j, 40_000_000);
        assert!(
            matches!(r, Err(InputError::ImageTooLarge { width: 65_535, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn formats_built_without_a_decoder_are_named_in_the_error() {
        for (bytes, name) in [
            (&b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0"[..], "BMP"),
            (b"GIF89a\x01\0\x01\0\0\0\0", "GIF"),
            (b"II*\0\x08\0\0\0", "TIFF"),
        ] {
            let err = decode(bytes, u64::MAX).unwrap_err();
            assert!(
                matches!(&err, InputError::UnsupportedImageFormat(n) if n == name),
                "{err:?}"
            );
            assert!(err.to_string().contains("JPEG, PNG and WebP"), "{err}");
        }
    }

    #[test]
    fn garbage_and_truncated_images_are_errors() {
        assert!(matches!(
            decode(b"hello world", u64::MAX),
            Err(InputError::UnknownImageFormat)
        ));
        let mut p = png(64, 64);
        p.truncate(p.len() / 2);
        assert!(matches!(
            decode(&p, u64::MAX),
            Err(InputError::CorruptImage(_))
        ));
        assert!(matches!(decode(b"", u64::MAX), Err(InputError::Empty)));
    }
}
