//! Image post-processing as diffusers' `image_processor.py` (`VaeImageProcessor`): decoded
//! images to `[0, 1]` arrays, to 8-bit pixels (`numpy_to_pil`) and PNG files.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;

use crate::{Error, Result};

fn image_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// diffusers' `postprocess` for `output_type="np"`: `[b, 3, h, w]` in `[-1, 1]` to
/// `[b, h, w, 3]` f32 in `[0, 1]` (`(x / 2 + 0.5).clamp(0, 1)`).
pub fn postprocess<B: Backend>(decoded: Tensor<B, 4>) -> Tensor<B, 4> {
    (decoded.cast(DType::F32) / 2.0 + 0.5)
        .clamp(0.0, 1.0)
        .permute([0, 2, 3, 1])
}

/// `[h, w, 3]` in `[0, 1]` to 8-bit RGB pixels, row-major, as diffusers' `numpy_to_pil`
/// (`(images * 255).round().astype("uint8")`: round half to even, then clamp).
pub fn to_rgb8<B: Backend>(image: &Tensor<B, 3>) -> Result<(u32, u32, Vec<u8>)> {
    let [h, w, c] = image.dims();
    if c != 3 {
        return Err(Error::InvalidArgument {
            pipeline: "image_processor",
            reason: format!("an RGB image is [height, width, 3], got {:?}", image.dims()),
        });
    }
    let values: Vec<f32> = image
        .clone()
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| Error::InvalidArgument {
            pipeline: "image_processor",
            reason: format!("{e:?}"),
        })?;
    let pixels = values
        .iter()
        .map(|v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    let dim = |n: usize| {
        u32::try_from(n).map_err(|_| Error::InvalidArgument {
            pipeline: "image_processor",
            reason: format!("image side {n} is too large"),
        })
    };
    Ok((dim(w)?, dim(h)?, pixels))
}

/// Writes one `[h, w, 3]` image in `[0, 1]` as an 8-bit RGB PNG.
pub fn save_png<B: Backend>(image: &Tensor<B, 3>, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let (w, h, pixels) = to_rgb8(image)?;
    let file =
        std::fs::File::create(path).map_err(|e| Error::Core(diffusers_core::Error::io(path, e)))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| image_err(path, e))?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| image_err(path, e))?;
    writer.finish().map_err(|e| image_err(path, e))
}

/// Reads an 8-bit RGB or RGBA PNG as `(width, height, rgb pixels)` (alpha dropped).
pub fn read_png(path: impl AsRef<Path>) -> Result<(u32, u32, Vec<u8>)> {
    let path = path.as_ref();
    let file =
        std::fs::File::open(path).map_err(|e| Error::Core(diffusers_core::Error::io(path, e)))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| image_err(path, e))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| image_err(path, "image too large"))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| image_err(path, e))?;
    buf.truncate(info.buffer_size());
    let rgb = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        other => {
            return Err(image_err(
                path,
                format!("unsupported PNG color type {other:?}"),
            ));
        }
    };
    Ok((info.width, info.height, rgb))
}

/// The file names for `n` images saved from one output path: the path itself for one image,
/// else `stem-0.png`, `stem-1.png`, ... next to it.
pub fn numbered_paths(path: impl AsRef<Path>, n: usize) -> Vec<PathBuf> {
    let path = path.as_ref();
    if n == 1 {
        return vec![path.to_path_buf()];
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..n)
        .map(|i| path.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}
