//! Images out (and in): NCHW tensors in [-1, 1] to PNG grids and strips, written atomically.

use crate::Tensor;
use anyhow::{bail, Context, Result};
use std::path::Path;

#[cfg(not(target_arch = "wasm32"))]
pub use crate::output::write_atomic;

/// Largest image file read: a PNG of the largest model size (16384², RGBA) is far smaller.
const MAX_IMAGE_FILE_BYTES: u64 = 1 << 30;

/// Maps a value in [-1, 1] to a byte the way diffusers' pipelines do:
/// `(x / 2 + 0.5).clamp(0, 1)`, then `round(v * 255)` with numpy's half-to-even rounding.
pub fn to_u8(x: f32) -> u8 {
    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0;
    v.round_ties_even() as u8
}

/// The channel counts a PNG holds as they are: gray, RGB, RGBA.
fn png_channels(c: usize) -> bool {
    matches!(c, 1 | 3 | 4)
}

/// Any other channel count as gray: each image's channels as tiles side by side, one black
/// pixel between them, so a 2- or 6-channel model can still be looked at.
fn channels_as_gray_tiles(batch: &Tensor) -> Tensor {
    let (n, c, h, w) = batch.nchw();
    let tw = c * w + (c - 1);
    let mut out = Tensor {
        shape: vec![n, 1, h, tw],
        data: vec![-1.0; n * h * tw],
    };
    for i in 0..n {
        for ch in 0..c {
            for y in 0..h {
                let src = &batch.data[((i * c + ch) * h + y) * w..][..w];
                out.data[(i * h + y) * tw + ch * (w + 1)..][..w].copy_from_slice(src);
            }
        }
    }
    out
}

/// Lays out the images of an NCHW batch (values in [-1, 1]) in a grid of `cols` columns with
/// `pad` pixels of black between them: 1 channel as gray, 3 as RGB, 4 as RGBA, any other count
/// as gray tiles, one per channel, side by side. Returns (width, height, channels, bytes).
pub fn grid(batch: &Tensor, cols: usize, pad: usize) -> Result<(u32, u32, usize, Vec<u8>)> {
    if batch.shape.len() != 4 {
        bail!(
            "expected images as [N, C, H, W], got shape {:?}",
            batch.shape
        );
    }
    if batch.shape[1] == 0 {
        bail!("images with 0 channels cannot be written");
    }
    if !png_channels(batch.shape[1]) {
        return grid(&channels_as_gray_tiles(batch), cols, pad);
    }
    let (n, c, h, w) = batch.nchw();
    if n == 0 || cols == 0 {
        bail!("no images to write");
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let (gw, gh) = (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad);
    let mut out = vec![0u8; gw * gh * c];
    for i in 0..n {
        let (ox, oy) = ((i % cols) * (w + pad), (i / cols) * (h + pad));
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = batch.data[((i * c + ch) * h + y) * w + x];
                    out[((oy + y) * gw + ox + x) * c + ch] = to_u8(v);
                }
            }
        }
    }
    Ok((gw as u32, gh as u32, c, out))
}

/// Encodes an 8-bit gray, RGB or RGBA image as PNG bytes.
pub fn encode_png(width: u32, height: u32, channels: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        4 => image::ExtendedColorType::Rgba8,
        c => bail!("a PNG holds 1, 3 or 4 channels, got {c}"),
    };
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    image::ImageEncoder::write_image(encoder, pixels, width, height, color)
        .context("PNG encoding failed")?;
    Ok(bytes)
}

/// Writes a batch as one PNG grid (about square when `cols` is None), atomically. Native only
/// (see `output`); in a browser, [`grid`] and [`encode_png`] give the same file's bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn save_grid(path: &Path, batch: &Tensor, cols: Option<usize>) -> Result<()> {
    let n = batch.shape.first().copied().unwrap_or(0);
    let cols = cols.unwrap_or_else(|| (n as f64).sqrt().ceil().max(1.0) as usize);
    let (w, h, c, px) = grid(batch, cols, 2)?;
    write_atomic(path, &encode_png(w, h, c, &px)?)
}

/// Reads a PNG (or any format `image` decodes) as a [1, C, H, W] tensor in [-1, 1], checking that it
/// has the size and channel count the model expects.
pub fn load_image(path: &Path, channels: usize, size: usize) -> Result<Tensor> {
    let bytes = crate::path_kind::read_bounded(path, "image", MAX_IMAGE_FILE_BYTES)?;
    decode_image(&bytes, &path.display().to_string(), channels, size)
}

/// Decodes an in-memory image (e.g. a bundled example) like [`load_image`]. The size is checked
/// from the header before any pixel is decoded, so a file claiming a huge size costs nothing.
pub fn decode_image(bytes: &[u8], name: &str, channels: usize, size: usize) -> Result<Tensor> {
    let img = decode_sized(bytes, name, size, size)?;
    image_to_tensor(img, name, channels, size)
}

/// Decodes an image that must be `width`×`height`: the size is checked from the header before
/// any pixel is decoded, and the decoder may allocate no more than such an image needs.
pub fn decode_sized(
    bytes: &[u8],
    name: &str,
    width: usize,
    height: usize,
) -> Result<image::DynamicImage> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .with_context(|| format!("cannot read image {name}"))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .with_context(|| format!("cannot decode image {name}"))?;
    if w as usize != width || h as usize != height {
        bail!("image {name} is {w}x{h}, but the model works on {width}x{height} images");
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Room for a 16-bit RGBA decode of the image plus its conversion.
    limits.max_alloc = Some(64 * (w as u64) * (h as u64) + (1 << 20));
    let mut decoder = reader()?;
    decoder.limits(limits);
    decoder
        .decode()
        .with_context(|| format!("cannot decode image {name}"))
}

fn image_to_tensor(
    img: image::DynamicImage,
    name: &str,
    channels: usize,
    size: usize,
) -> Result<Tensor> {
    if img.width() as usize != size || img.height() as usize != size {
        bail!(
            "image {name} is {}x{}, but the model works on {size}x{size} images",
            img.width(),
            img.height()
        );
    }
    let (data, found) = match img.color().channel_count() {
        1 | 2 => (img.to_luma8().into_raw(), 1),
        _ => (img.to_rgb8().into_raw(), 3),
    };
    if found != channels {
        bail!("image {name} has {found} channel(s), but the model expects {channels}");
    }
    let mut t = Tensor::zeros(&[1, channels, size, size]);
    for (i, &v) in data.iter().enumerate() {
        let (pix, ch) = (i / channels, i % channels);
        t.data[ch * size * size + pix] = v as f32 / 127.5 - 1.0;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_matches_diffusers() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(f32::NEG_INFINITY), 0);
        // 0.0 -> 0.5 * 255 = 127.5 rounds half to even -> 128
        assert_eq!(to_u8(0.0), 128);
    }

    #[test]
    fn grid_places_images_and_padding() {
        let mut t = Tensor::zeros(&[3, 1, 2, 2]);
        t.data[4..8].fill(1.0); // image 1 white
        let (w, h, c, px) = grid(&t, 2, 1).unwrap();
        assert_eq!((w, h, c), (5, 5, 1));
        assert_eq!(px[3], 255); // image 1 starts at x = 3
        assert_eq!(px[2], 0); // padding column
        assert_eq!(px[0], 128); // image 0 is mid-grey
    }

    #[test]
    fn any_channel_count_is_written() {
        // 4 channels: RGBA as it is.
        let t = Tensor::zeros(&[2, 4, 3, 3]);
        let (w, h, c, px) = grid(&t, 2, 1).unwrap();
        assert_eq!((w, h, c, px.len()), (7, 3, 4, 7 * 3 * 4));
        assert!(encode_png(w, h, c, &px).is_ok());
        // 2 channels: gray tiles side by side, channel 1 white, one black pixel between.
        let mut t = Tensor::zeros(&[1, 2, 2, 3]);
        t.data[6..].fill(1.0);
        let (w, h, c, px) = grid(&t, 1, 0).unwrap();
        assert_eq!((w, h, c), (7, 2, 1));
        assert_eq!(&px[..7], &[128, 128, 128, 0, 255, 255, 255]);
        assert!(encode_png(w, h, c, &px).is_ok());
        // 5 channels as well.
        let (w, _, c, _) = grid(&Tensor::zeros(&[1, 5, 2, 2]), 1, 0).unwrap();
        assert_eq!((w, c), (14, 1));
        assert!(grid(&Tensor::zeros(&[1, 0, 2, 2]), 1, 0).is_err());
    }
}
