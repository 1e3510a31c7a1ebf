//! A job's `thumbnail`: the capture resized in the worker to fit a box,
//! encoded again in the job's format. Decoding and encoding are CPU work
//! the caller runs off the async threads.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageEncoder};
use url2png_core::job::{Fit, ImageFormat, Thumbnail};

/// The thumbnail of `bytes`: its encoding, width and height. An image
/// already inside the box is returned as it is.
pub fn make(
    bytes: Vec<u8>,
    format: ImageFormat,
    quality: Option<u8>,
    box_: &Thumbnail,
) -> Result<(Vec<u8>, u32, u32), String> {
    let image = image::load_from_memory(&bytes).map_err(|e| format!("reading the capture: {e}"))?;
    let (w, h) = (image.width(), image.height());
    let (bw, bh) = (box_.width, box_.height.unwrap_or(u32::MAX));
    if w <= bw && h <= bh {
        return Ok((bytes, w, h));
    }
    let resized = match (box_.fit, box_.height) {
        (Fit::Contain, _) | (_, None) => image.resize(bw, bh, FilterType::Lanczos3),
        (Fit::Fill, Some(_)) => image.resize_exact(bw.min(w), bh.min(h), FilterType::Lanczos3),
        (Fit::Cover, Some(_)) => cover(&image, bw, bh),
    };
    let (tw, th) = (resized.width(), resized.height());
    let mut out = Vec::new();
    let encoded = match format {
        ImageFormat::Png => resized.write_with_encoder(PngEncoder::new(&mut out)),
        ImageFormat::Pdf => return Err("a PDF has no thumbnail".into()),
        ImageFormat::Jpeg => JpegEncoder::new_with_quality(&mut out, quality.unwrap_or(80))
            .write_image(
                resized.to_rgb8().as_raw(),
                tw,
                th,
                image::ExtendedColorType::Rgb8,
            ),
        // The crate's WebP encoder is lossless: a thumbnail is small.
        ImageFormat::Webp => WebPEncoder::new_lossless(&mut out).write_image(
            resized.to_rgba8().as_raw(),
            tw,
            th,
            image::ExtendedColorType::Rgba8,
        ),
    };
    encoded.map_err(|e| format!("encoding the thumbnail: {e}"))?;
    Ok((out, tw, th))
}

/// Scale to cover the box, then cut from the top left (a page's start).
fn cover(image: &DynamicImage, bw: u32, bh: u32) -> DynamicImage {
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    let scale = (f64::from(bw) / w).max(f64::from(bh) / h).min(1.0);
    let sw = ((w * scale).round() as u32).max(1);
    let sh = ((h * scale).round() as u32).max(1);
    let scaled = image.resize_exact(sw, sh, FilterType::Lanczos3);
    scaled.crop_imm(0, 0, bw.min(sw), bh.min(sh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    /// A 400×1000 PNG: red top half, blue bottom half.
    fn page() -> Vec<u8> {
        let img = RgbaImage::from_fn(400, 1000, |_, y| {
            if y < 500 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 0, 255, 255])
            }
        });
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(img)
            .write_with_encoder(PngEncoder::new(&mut out))
            .unwrap();
        out
    }

    fn thumb(width: u32, height: Option<u32>, fit: Fit) -> Thumbnail {
        Thumbnail { width, height, fit }
    }

    #[test]
    fn each_fit_gives_its_size_and_keeps_what_it_should() {
        let (_, w, h) = make(
            page(),
            ImageFormat::Png,
            None,
            &thumb(100, None, Fit::Contain),
        )
        .unwrap();
        assert_eq!((w, h), (100, 250), "width alone keeps proportions");
        let (_, w, h) = make(
            page(),
            ImageFormat::Png,
            None,
            &thumb(200, Some(200), Fit::Contain),
        )
        .unwrap();
        assert_eq!((w, h), (80, 200));
        let (bytes, w, h) = make(
            page(),
            ImageFormat::Png,
            None,
            &thumb(200, Some(100), Fit::Cover),
        )
        .unwrap();
        assert_eq!((w, h), (200, 100));
        let img = image::load_from_memory(&bytes).unwrap().to_rgba8();
        assert!(
            img.pixels().all(|p| p.0 == [255, 0, 0, 255]),
            "cut from the top"
        );
        let (_, w, h) = make(
            page(),
            ImageFormat::Png,
            None,
            &thumb(50, Some(50), Fit::Fill),
        )
        .unwrap();
        assert_eq!((w, h), (50, 50));
    }

    #[test]
    fn nothing_is_enlarged_and_every_format_encodes() {
        let original = page();
        let (bytes, w, h) = make(
            original.clone(),
            ImageFormat::Png,
            None,
            &thumb(800, Some(2000), Fit::Cover),
        )
        .unwrap();
        assert_eq!((w, h, bytes), (400, 1000, original));
        for format in [ImageFormat::Jpeg, ImageFormat::Webp] {
            let (bytes, w, h) =
                make(page(), format, Some(70), &thumb(40, None, Fit::Contain)).unwrap();
            let read = image::load_from_memory(&bytes).unwrap();
            assert_eq!(
                (read.width(), read.height(), w, h),
                (40, 100, 40, 100),
                "{format}"
            );
        }
    }
}
