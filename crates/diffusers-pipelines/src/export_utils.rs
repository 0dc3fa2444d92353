//! Writing a video's frames to files, as diffusers' `utils/export_utils.py`: [`export_to_video`]
//! (H.264 in MP4), [`export_to_gif`] (animated GIF), [`export_to_frames`] (a folder of PNGs) and
//! [`export`], which chooses by the path.
//!
//! Frames are one video of a pipeline's `[batch, frames, height, width, 3]` output: f32 values in
//! `[0, 1]` laid out `[frames, height, width, 3]`, given as a slice and its dims (or as a burn
//! tensor through [`export_tensor`]). Values outside `[0, 1]` are clamped; NaN or infinite values,
//! an empty video, a side of 0 or a channel count other than 3 are [`Error::Export`] before
//! anything is written. Every file is written to a temporary file in the destination's folder and
//! renamed into place, so a failed export leaves nothing behind (and never a half-written file).
//!
//! 8-bit quantization follows the input diffusers' functions see:
//! - MP4: diffusers' `export_to_video` casts `(frame * 255).astype(np.uint8)`, which truncates;
//!   so does [`export_to_video`] ([`quantize_truncate`]).
//! - GIF and PNG: diffusers' `export_to_gif` takes PIL images, which pipelines make with
//!   `numpy_to_pil`: `(images * 255).round().astype("uint8")`, round half to even; so do
//!   [`export_to_gif`] and [`export_to_frames`] ([`quantize_round`]).
//!
//! The encoders are pure Rust (GIF: the `gif` crate) or compiled from bundled C++ source at build
//! time (H.264: Cisco's OpenH264 through the `openh264` crate, no system library, no download);
//! the MP4 container is written here (ISO/IEC 14496-12 and 14496-15 boxes, nothing else needed
//! for one H.264 track).

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::YUVBuffer;

use crate::{Error, Result};

fn export_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Export {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Core(diffusers_core::Error::io(path, e))
}

/// A checked view of a video: `[frames, height, width, 3]` f32 values, all finite.
struct Video<'a> {
    values: &'a [f32],
    frames: usize,
    height: usize,
    width: usize,
}

impl<'a> Video<'a> {
    fn new(values: &'a [f32], dims: [usize; 4], path: &Path) -> Result<Self> {
        let [frames, height, width, channels] = dims;
        if channels != 3 {
            return Err(export_err(
                path,
                format!(
                    "frames are [frames, height, width, 3] RGB, got {channels} channels (dims {dims:?})"
                ),
            ));
        }
        if frames == 0 || height == 0 || width == 0 {
            return Err(export_err(
                path,
                format!("no frames to write: dims {dims:?} hold no pixel"),
            ));
        }
        let len = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| export_err(path, format!("dims {dims:?} overflow")))?;
        if len != values.len() {
            return Err(export_err(
                path,
                format!(
                    "dims {dims:?} need {len} values, the slice holds {}",
                    values.len()
                ),
            ));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let pixel = i / 3;
            return Err(export_err(
                path,
                format!(
                    "value {} at frame {}, row {}, column {}, channel {} is not finite",
                    values[i],
                    pixel / (width * height),
                    pixel / width % height,
                    pixel % width,
                    i % 3
                ),
            ));
        }
        Ok(Self {
            values,
            frames,
            height,
            width,
        })
    }

    fn frame(&self, i: usize) -> &'a [f32] {
        let n = self.height * self.width * 3;
        &self.values[i * n..(i + 1) * n]
    }
}

/// `[0, 1]` values to 8-bit as diffusers' `export_to_video`: `(x * 255).astype(np.uint8)`, which
/// truncates (values are clamped to `[0, 1]` first; NaN becomes 0).
pub fn quantize_truncate(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8)
        .collect()
}

/// `[0, 1]` values to 8-bit as diffusers' `numpy_to_pil` (the PIL frames `export_to_gif` gets):
/// `(x * 255).round().astype("uint8")`, round half to even (values are clamped to `[0, 1]`
/// first; NaN becomes 0).
pub fn quantize_round(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
        .collect()
}

/// What [`export`] writes for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// `.mp4`: [`export_to_video`].
    Mp4,
    /// `.gif`: [`export_to_gif`].
    Gif,
    /// No extension, or an existing directory: [`export_to_frames`].
    Frames,
}

impl ExportFormat {
    /// The format for `path`: `.mp4` and `.gif` (any case) by extension, a path without an
    /// extension or an existing directory as a PNG folder; any other extension is an error.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Ok(Self::Frames);
        }
        match path.extension() {
            None => Ok(Self::Frames),
            Some(ext) => match ext.to_string_lossy().to_ascii_lowercase().as_str() {
                "mp4" => Ok(Self::Mp4),
                "gif" => Ok(Self::Gif),
                other => Err(export_err(
                    path,
                    format!(
                        "unknown video extension `.{other}`: use .mp4 (H.264), .gif, or a path \
                         without an extension for a folder of PNG frames"
                    ),
                )),
            },
        }
    }
}

/// Writes `frames` (`[frames, height, width, 3]` f32 in `[0, 1]`, see the module docs) to `path`
/// in the format [`ExportFormat::from_path`] chooses, and returns the path written.
///
/// ```
/// use diffusers_pipelines::export_utils::export;
/// let dir = tempfile::tempdir()?;
/// let dims = [2, 16, 16, 3];
/// let frames: Vec<f32> = (0..dims.iter().product::<usize>())
///     .map(|i| (i % 256) as f32 / 255.0)
///     .collect();
/// export(&frames, dims, dir.path().join("clip.mp4"), 8)?;
/// export(&frames, dims, dir.path().join("clip.gif"), 8)?;
/// export(&frames, dims, dir.path().join("clip"), 8)?; // clip/frame_0000.png, clip/frame_0001.png
/// assert!(export(&frames, dims, dir.path().join("clip.avi"), 8).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn export(
    frames: &[f32],
    dims: [usize; 4],
    path: impl AsRef<Path>,
    fps: u32,
) -> Result<PathBuf> {
    let path = path.as_ref();
    match ExportFormat::from_path(path)? {
        ExportFormat::Mp4 => export_to_video(frames, dims, path, fps),
        ExportFormat::Gif => export_to_gif(frames, dims, path, fps),
        ExportFormat::Frames => export_to_frames(frames, dims, path),
    }
}

/// [`export`] for a `[frames, height, width, 3]` tensor (one video of a pipeline's output).
pub fn export_tensor<B: Backend>(
    video: &Tensor<B, 4>,
    path: impl AsRef<Path>,
    fps: u32,
) -> Result<PathBuf> {
    let path = path.as_ref();
    let dims = video.dims();
    let values: Vec<f32> = video
        .clone()
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| export_err(path, format!("{e:?}")))?;
    export(&values, dims, path, fps)
}

/// Writes a file through a temporary file in the same folder, renamed to `path` once `write`
/// succeeded (dropped, so removed, otherwise).
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<()>,
) -> Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| export_err(path, "the path names no file"))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    {
        let mut out = std::io::BufWriter::new(tmp.as_file());
        write(&mut out)?;
        out.flush().map_err(|e| io_err(path, e))?;
    }
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    Ok(path.to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// MP4 (H.264)
// ---------------------------------------------------------------------------------------------

/// Bits per pixel and frame the H.264 encoder aims at (OpenH264's quality rate control, at least
/// 100 kbit/s): about 3 Mbit/s for Wan's 832x480 at 16 fps. Measured on the test clip at 256x192
/// and 8 fps (PSNR of ffmpeg's decoding against our 8-bit frames, where a lossless 4:2:0 encoding
/// reaches 41.9 dB): 0.13 bit per pixel gives 33.3 dB, 0.5 and more 41.0 dB (the encoder's
/// plateau: 1 and 5 Mbit/s write the same stream).
const H264_BITS_PER_PIXEL: f64 = 0.5;

/// A keyframe every this many seconds (seeking in players), and on the first frame.
const KEYFRAME_SECONDS: u32 = 2;

/// Writes `frames` as H.264 (constrained baseline profile, yuv420p, BT.601 limited range,
/// signalled in the stream) in an MP4 file playable by browsers and common players, at `fps`
/// frames per second exactly (the track's timescale is `fps * 1000`, each frame lasting 1000).
///
/// Quantization: truncation, as diffusers' `export_to_video` ([`quantize_truncate`]).
///
/// Sizes: yuv420p needs an even width and height. diffusers (imageio's ffmpeg with
/// `macro_block_size=16`) resizes a video to the next multiple of 16 with a warning; here an odd
/// width or height is padded by one column or row repeating the last one (the picture is not
/// resampled), with a warning, and the video has that even size. Other sizes are kept exactly
/// (the stream crops to them). OpenH264 encodes up to 3840x2160 (or 2160x3840).
///
/// ```
/// use diffusers_pipelines::export_utils::export_to_video;
/// let dir = tempfile::tempdir()?;
/// let frames = vec![0.5f32; 3 * 32 * 48 * 3];
/// let path = export_to_video(&frames, [3, 32, 48, 3], dir.path().join("gray.mp4"), 8)?;
/// assert!(std::fs::metadata(path)?.len() > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn export_to_video(
    frames: &[f32],
    dims: [usize; 4],
    path: impl AsRef<Path>,
    fps: u32,
) -> Result<PathBuf> {
    let path = path.as_ref();
    let video = Video::new(frames, dims, path)?;
    let timescale = fps
        .checked_mul(1000)
        .filter(|_| fps > 0)
        .ok_or_else(|| export_err(path, format!("fps must be 1 to 4294967, got {fps}")))?;
    let (width, height) = (
        video.width + video.width % 2,
        video.height + video.height % 2,
    );
    if (width, height) != (video.width, video.height) {
        tracing::warn!(
            path = %path.display(),
            "H.264 yuv420p needs even sizes: {}x{} padded to {width}x{height} by repeating the \
             last column/row",
            video.width,
            video.height
        );
    }
    let (big, small) = (width.max(height), width.min(height));
    if big > 3840 || small > 2160 {
        return Err(export_err(
            path,
            format!(
                "{width}x{height} is larger than OpenH264 encodes (3840x2160 or 2160x3840); \
                 write a GIF or PNG frames instead"
            ),
        ));
    }
    let samples = encode_h264(&video, width, height, fps, path)?;
    let mp4 = mp4_file(&samples, width, height, timescale, path)?;
    write_atomic(path, |out| out.write_all(&mp4).map_err(|e| io_err(path, e)))
}

/// One encoded frame: length-prefixed NAL units (no parameter sets), and whether it is an IDR.
struct Sample {
    data: Vec<u8>,
    sync: bool,
}

/// The encoded frames with the stream's one SPS and PPS.
struct H264Stream {
    sps: Vec<u8>,
    pps: Vec<u8>,
    samples: Vec<Sample>,
}

fn encode_h264(
    video: &Video<'_>,
    width: usize,
    height: usize,
    fps: u32,
    path: &Path,
) -> Result<H264Stream> {
    let bitrate = (width as f64 * height as f64 * f64::from(fps) * H264_BITS_PER_PIXEL)
        .clamp(100_000.0, f64::from(u32::MAX / 2)) as u32;
    let config = EncoderConfig::new()
        .usage_type(UsageType::CameraVideoRealTime)
        .profile(Profile::Baseline)
        .rate_control_mode(RateControlMode::Quality)
        .bitrate(BitRate::from_bps(bitrate))
        .max_frame_rate(FrameRate::from_hz(fps as f32))
        .skip_frames(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(
            fps.saturating_mul(KEYFRAME_SECONDS),
        ))
        .vui(VuiConfig::bt601());
    let h264 = |e: openh264::Error| export_err(path, format!("H.264 encoder: {e}"));
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config).map_err(h264)?;
    let mut stream = H264Stream {
        sps: Vec::new(),
        pps: Vec::new(),
        samples: Vec::with_capacity(video.frames),
    };
    for i in 0..video.frames {
        let rgb = quantize_truncate(video.frame(i));
        let yuv = rgb_to_i420(&rgb, video.width, video.height, width, height);
        let bits = encoder
            .encode(&YUVBuffer::from_vec(yuv, width, height))
            .map_err(h264)?;
        if matches!(bits.frame_type(), FrameType::Skip | FrameType::Invalid) {
            return Err(export_err(
                path,
                format!(
                    "H.264 encoder: frame {i} was not encoded ({:?})",
                    bits.frame_type()
                ),
            ));
        }
        let annex_b = bits.to_vec();
        let mut sample = Sample {
            data: Vec::with_capacity(annex_b.len()),
            sync: false,
        };
        for nal in nal_units(&annex_b) {
            let Some(&header) = nal.first() else { continue };
            match header & 0x1f {
                7 | 8 => {
                    let slot = if header & 0x1f == 7 {
                        &mut stream.sps
                    } else {
                        &mut stream.pps
                    };
                    if slot.is_empty() {
                        *slot = nal.to_vec();
                    } else if slot != nal {
                        return Err(export_err(
                            path,
                            "H.264 encoder changed its parameter sets mid-stream",
                        ));
                    }
                }
                kind => {
                    sample.sync |= kind == 5;
                    let len = u32::try_from(nal.len())
                        .map_err(|_| export_err(path, "H.264 NAL unit over 4 GiB"))?;
                    sample.data.extend_from_slice(&len.to_be_bytes());
                    sample.data.extend_from_slice(nal);
                }
            }
        }
        if sample.data.is_empty() {
            return Err(export_err(
                path,
                format!("H.264 encoder gave no picture for frame {i}"),
            ));
        }
        stream.samples.push(sample);
    }
    if stream.sps.len() < 4 || stream.pps.is_empty() {
        return Err(export_err(
            path,
            "H.264 encoder gave no sequence/picture parameter set",
        ));
    }
    tracing::debug!(
        path = %path.display(),
        bytes = stream.samples.iter().map(|s| s.data.len()).sum::<usize>(),
        bitrate,
        "encoded H.264"
    );
    Ok(stream)
}

/// The NAL units of an Annex B byte stream (start codes and trailing zero bytes removed).
fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            let end = starts.get(k + 1).map_or(stream.len(), |&next| next - 3);
            let mut nal = &stream[s..end.max(s)];
            while let [rest @ .., 0] = nal {
                nal = rest;
            }
            nal
        })
        .filter(|nal| !nal.is_empty())
        .collect()
}

/// 8-bit RGB (`src_w x src_h`) to I420 (`width x height`, even, the last column/row repeated
/// where larger), BT.601 limited range as ffmpeg's `rgb24 -> yuv420p`: each chroma sample from
/// the mean of its 2x2 pixels.
fn rgb_to_i420(rgb: &[u8], src_w: usize, src_h: usize, width: usize, height: usize) -> Vec<u8> {
    let px = |x: usize, y: usize| {
        let i = (y.min(src_h - 1) * src_w + x.min(src_w - 1)) * 3;
        [
            f32::from(rgb[i]),
            f32::from(rgb[i + 1]),
            f32::from(rgb[i + 2]),
        ]
    };
    let (cw, ch) = (width / 2, height / 2);
    let mut out = vec![0u8; width * height + 2 * cw * ch];
    let (y_plane, chroma) = out.split_at_mut(width * height);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    for y in 0..height {
        for x in 0..width {
            let [r, g, b] = px(x, y);
            y_plane[y * width + x] = (16.0 + 0.256_788 * r + 0.504_129 * g + 0.097_906 * b)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    for cy in 0..ch {
        for cx in 0..cw {
            let mut sum = [0f32; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(2 * cx + dx, 2 * cy + dy);
                for c in 0..3 {
                    sum[c] += p[c] / 4.0;
                }
            }
            let [r, g, b] = sum;
            let u = 128.0 - 0.148_223 * r - 0.290_993 * g + 0.439_216 * b;
            let v = 128.0 + 0.439_216 * r - 0.367_788 * g - 0.071_427 * b;
            u_plane[cy * cw + cx] = u.round().clamp(0.0, 255.0) as u8;
            v_plane[cy * cw + cx] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// A box: size, type, body.
fn mp4_box(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    // Callers check that the file fits 32-bit offsets, so every box does.
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// A full box: version and flags before the body.
fn full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let head = (u32::from(version) << 24 | (flags & 0x00ff_ffff)).to_be_bytes();
    mp4_box(kind, &[&head, body])
}

/// Big-endian fields in order.
#[derive(Default)]
struct Fields(Vec<u8>);

impl Fields {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn zeros(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    /// The unity transformation matrix of mvhd and tkhd.
    fn matrix(self) -> Self {
        [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000]
            .into_iter()
            .fold(self, |f, v| f.u32(v))
    }
}

/// The MP4 file: ftyp, moov (before the media data, so players start before the whole file
/// is read), mdat with the samples as one chunk.
fn mp4_file(
    stream: &H264Stream,
    width: usize,
    height: usize,
    timescale: u32,
    path: &Path,
) -> Result<Vec<u8>> {
    const MOVIE_TIMESCALE: u32 = 1000;
    let too_big = || export_err(path, "the video is over 4 GiB, beyond 32-bit MP4 offsets");
    let n = u32::try_from(stream.samples.len()).map_err(|_| too_big())?;
    let media_duration = u64::from(n) * 1000;
    let media_duration = u32::try_from(media_duration).map_err(|_| too_big())?;
    let movie_duration =
        u64::from(media_duration) * u64::from(MOVIE_TIMESCALE) / u64::from(timescale);
    let movie_duration = u32::try_from(movie_duration).map_err(|_| too_big())?;
    let (w16, h16) = (
        u16::try_from(width).map_err(|_| too_big())?,
        u16::try_from(height).map_err(|_| too_big())?,
    );
    let mdat_len: usize = 8 + stream.samples.iter().map(|s| s.data.len()).sum::<usize>();

    let ftyp = mp4_box(
        b"ftyp",
        &[
            b"isom",
            &0x200u32.to_be_bytes(),
            b"isom",
            b"iso2",
            b"avc1",
            b"mp41",
        ],
    );
    let mvhd = full_box(
        b"mvhd",
        0,
        0,
        &Fields::default()
            .u32(0) // creation time
            .u32(0) // modification time
            .u32(MOVIE_TIMESCALE)
            .u32(movie_duration)
            .u32(0x0001_0000) // rate 1.0
            .u16(0x0100) // volume 1.0
            .zeros(10)
            .matrix()
            .zeros(24) // pre_defined
            .u32(2) // next track id
            .0,
    );
    let tkhd = full_box(
        b"tkhd",
        0,
        0x3, // enabled, in movie
        &Fields::default()
            .u32(0)
            .u32(0)
            .u32(1) // track id
            .u32(0)
            .u32(movie_duration)
            .zeros(8)
            .u16(0) // layer
            .u16(0) // alternate group
            .u16(0) // volume
            .u16(0)
            .matrix()
            .u32(u32::from(w16) << 16)
            .u32(u32::from(h16) << 16)
            .0,
    );
    let mdhd = full_box(
        b"mdhd",
        0,
        0,
        &Fields::default()
            .u32(0)
            .u32(0)
            .u32(timescale)
            .u32(media_duration)
            .u16(0x55c4) // language "und"
            .u16(0)
            .0,
    );
    let hdlr = full_box(
        b"hdlr",
        0,
        0,
        &Fields::default()
            .u32(0)
            .bytes(b"vide")
            .zeros(12)
            .bytes(b"VideoHandler\0")
            .0,
    );
    let vmhd = full_box(b"vmhd", 0, 1, &[0; 8]);
    let dinf = mp4_box(
        b"dinf",
        &[&full_box(
            b"dref",
            0,
            0,
            &[&1u32.to_be_bytes()[..], &full_box(b"url ", 0, 1, &[])].concat(),
        )],
    );
    let sps_len = u16::try_from(stream.sps.len()).map_err(|_| too_big())?;
    let pps_len = u16::try_from(stream.pps.len()).map_err(|_| too_big())?;
    let avcc = mp4_box(
        b"avcC",
        &[&Fields::default()
            .u8(1) // configurationVersion
            .bytes(&stream.sps[1..4]) // profile, compatibility, level
            .u8(0xff) // 4-byte NAL lengths
            .u8(0xe1) // one SPS
            .u16(sps_len)
            .bytes(&stream.sps)
            .u8(1) // one PPS
            .u16(pps_len)
            .bytes(&stream.pps)
            .0],
    );
    let mut compressor = [0u8; 32];
    let name = b"OpenH264";
    compressor[0] = name.len() as u8;
    compressor[1..=name.len()].copy_from_slice(name);
    let avc1 = mp4_box(
        b"avc1",
        &[
            &Fields::default()
                .zeros(6)
                .u16(1) // data reference index
                .zeros(16) // pre_defined, reserved
                .u16(w16)
                .u16(h16)
                .u32(0x0048_0000) // 72 dpi
                .u32(0x0048_0000)
                .u32(0)
                .u16(1) // frames per sample
                .bytes(&compressor)
                .u16(0x0018) // depth
                .u16(0xffff) // pre_defined -1
                .0,
            &avcc,
        ],
    );
    let stsd = full_box(b"stsd", 0, 0, &[&1u32.to_be_bytes()[..], &avc1].concat());
    let stts = full_box(b"stts", 0, 0, &Fields::default().u32(1).u32(n).u32(1000).0);
    let sync: Vec<u32> = (1..=n)
        .zip(&stream.samples)
        .filter(|(_, s)| s.sync)
        .map(|(i, _)| i)
        .collect();
    let stss = full_box(
        b"stss",
        0,
        0,
        &sync
            .iter()
            .fold(Fields::default().u32(sync.len() as u32), |f, &i| f.u32(i))
            .0,
    );
    let stsc = full_box(
        b"stsc",
        0,
        0,
        &Fields::default().u32(1).u32(1).u32(n).u32(1).0,
    );
    let mut sizes = Fields::default().u32(0).u32(n);
    for s in &stream.samples {
        sizes = sizes.u32(u32::try_from(s.data.len()).map_err(|_| too_big())?);
    }
    let stsz = full_box(b"stsz", 0, 0, &sizes.0);
    // stco's offset depends on moov's size, which does not depend on the offset's value.
    let moov = |offset: u32| {
        let stco = full_box(b"stco", 0, 0, &Fields::default().u32(1).u32(offset).0);
        let stbl = mp4_box(b"stbl", &[&stsd, &stts, &stss, &stsc, &stsz, &stco]);
        let minf = mp4_box(b"minf", &[&vmhd, &dinf, &stbl]);
        let mdia = mp4_box(b"mdia", &[&mdhd, &hdlr, &minf]);
        let trak = mp4_box(b"trak", &[&tkhd, &mdia]);
        mp4_box(b"moov", &[&mvhd, &trak])
    };
    let head_len = ftyp.len() + moov(0).len();
    let total = head_len + mdat_len;
    if u32::try_from(total).is_err() {
        return Err(too_big());
    }
    let moov = moov((head_len + 8) as u32);
    let mut file = Vec::with_capacity(total);
    file.extend_from_slice(&ftyp);
    file.extend_from_slice(&moov);
    file.extend_from_slice(&(mdat_len as u32).to_be_bytes());
    file.extend_from_slice(b"mdat");
    for s in &stream.samples {
        file.extend_from_slice(&s.data);
    }
    Ok(file)
}

// ---------------------------------------------------------------------------------------------
// GIF
// ---------------------------------------------------------------------------------------------

/// Writes `frames` as an animated GIF that loops forever (as diffusers' `export_to_gif`,
/// `loop=0`), each frame with its own palette of at most 256 colors, chosen by median cut and
/// applied without dithering, as PIL (which diffusers uses) converts an RGB frame for a GIF
/// (see [`median_cut`]).
///
/// Frame delay: diffusers asks PIL for `duration=1000 // fps` milliseconds and PIL stores
/// `int(duration / 10)` hundredths of a second (GIF's unit); the same here: 8 fps gives 12/100 s,
/// 10 fps 10/100 s, over 100 fps 0 (which players show at their own minimum). Unlike PIL, frames
/// equal to the previous one are kept (PIL merges them into one longer frame), so the GIF has
/// one frame per input frame.
///
/// Quantization: rounding, as diffusers' `numpy_to_pil` ([`quantize_round`]). GIF sides are at
/// most 65535.
///
/// ```
/// use diffusers_pipelines::export_utils::export_to_gif;
/// let dir = tempfile::tempdir()?;
/// let frames = vec![0.25f32; 2 * 8 * 8 * 3];
/// export_to_gif(&frames, [2, 8, 8, 3], dir.path().join("flat.gif"), 10)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn export_to_gif(
    frames: &[f32],
    dims: [usize; 4],
    path: impl AsRef<Path>,
    fps: u32,
) -> Result<PathBuf> {
    let path = path.as_ref();
    let video = Video::new(frames, dims, path)?;
    if fps == 0 {
        return Err(export_err(path, "fps must be at least 1"));
    }
    let side = |n: usize| {
        u16::try_from(n)
            .map_err(|_| export_err(path, format!("GIF sides are at most 65535, got {n}")))
    };
    let (w, h) = (side(video.width)?, side(video.height)?);
    let delay = u16::try_from(1000 / fps / 10).unwrap_or(u16::MAX);
    let gif_err = |e: gif::EncodingError| export_err(path, format!("GIF: {e}"));
    write_atomic(path, |out| {
        let mut encoder = gif::Encoder::new(out, w, h, &[]).map_err(gif_err)?;
        encoder.set_repeat(gif::Repeat::Infinite).map_err(gif_err)?;
        for i in 0..video.frames {
            let rgb = quantize_round(video.frame(i));
            let (palette, indices) = median_cut(&rgb);
            let mut frame = gif::Frame::from_palette_pixels(w, h, indices, palette, None);
            frame.delay = delay;
            encoder.write_frame(&frame).map_err(gif_err)?;
        }
        encoder.into_inner().map_err(gif_err)?;
        Ok(())
    })
}

/// A palette of at most 256 colors for 8-bit RGB pixels by median cut (Heckbert), and each
/// pixel's index in it: the distinct colors start in one box; the box with the widest channel
/// range is split at its pixel-weighted median along that channel until there are 256 boxes (or
/// every box holds one color); each palette entry is its box's pixel-weighted mean, and each
/// color maps to its nearest entry (squared RGB distance). A frame of at most 256 colors is kept
/// exactly. Returns `(palette as r, g, b triples, one index per pixel)`.
pub fn median_cut(rgb: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = |p: &[u8]| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]);
    let chan = |c: u32, k: usize| ((c >> (16 - 8 * k)) & 0xff) as u8;
    let mut keys: Vec<u32> = rgb.chunks_exact(3).map(key).collect();
    keys.sort_unstable();
    // Distinct colors with their pixel counts.
    let mut colors: Vec<(u32, u32)> = Vec::new();
    for k in keys {
        match colors.last_mut() {
            Some((c, n)) if *c == k => *n += 1,
            _ => colors.push((k, 1)),
        }
    }
    // The widest channel range of a box and its channel.
    let widest = |b: &[(u32, u32)]| {
        (0..3)
            .map(|k| {
                let (lo, hi) = b.iter().fold((u8::MAX, 0), |(lo, hi), &(c, _)| {
                    (chan(c, k).min(lo), chan(c, k).max(hi))
                });
                (hi.saturating_sub(lo), k)
            })
            .max()
            .unwrap_or((0, 0))
    };
    // Boxes are ranges of `colors`.
    let mut boxes = vec![(0usize, colors.len())];
    while boxes.len() < 256 {
        let Some((i, (_, k))) = boxes
            .iter()
            .enumerate()
            .filter(|(_, (s, e))| e - s > 1)
            .map(|(i, &(s, e))| (i, widest(&colors[s..e])))
            .max_by_key(|&(_, range)| range)
        else {
            break;
        };
        let (s, e) = boxes[i];
        let part = &mut colors[s..e];
        part.sort_unstable_by_key(|&(c, _)| chan(c, k));
        let total: u64 = part.iter().map(|&(_, n)| u64::from(n)).sum();
        let mut seen = 0u64;
        let mut cut = part.len() / 2;
        for (j, &(_, n)) in part.iter().enumerate() {
            seen += u64::from(n);
            if 2 * seen >= total {
                cut = j + 1;
                break;
            }
        }
        let cut = cut.clamp(1, part.len() - 1);
        boxes[i] = (s, s + cut);
        boxes.push((s + cut, e));
    }
    let mut palette = Vec::with_capacity(boxes.len() * 3);
    for &(s, e) in &boxes {
        let mut sum = [0u64; 3];
        let mut total = 0u64;
        for &(c, n) in &colors[s..e] {
            for (k, acc) in sum.iter_mut().enumerate() {
                *acc += u64::from(chan(c, k)) * u64::from(n);
            }
            total += u64::from(n);
        }
        let total = total.max(1);
        palette.extend(sum.map(|v| ((v + total / 2) / total) as u8));
    }
    // `colors` is sorted by key again for the lookup; each maps to its nearest entry.
    colors.sort_unstable_by_key(|&(c, _)| c);
    let nearest: Vec<u8> = colors
        .iter()
        .map(|&(c, _)| {
            let px = [chan(c, 0), chan(c, 1), chan(c, 2)].map(i32::from);
            palette
                .chunks_exact(3)
                .enumerate()
                .min_by_key(|(_, q)| {
                    (0..3)
                        .map(|k| (px[k] - i32::from(q[k])).pow(2))
                        .sum::<i32>()
                })
                .map_or(0, |(j, _)| j as u8)
        })
        .collect();
    let indices = rgb
        .chunks_exact(3)
        .map(|p| {
            colors
                .binary_search_by_key(&key(p), |&(c, _)| c)
                .map_or(0, |j| nearest[j])
        })
        .collect();
    (palette, indices)
}

// ---------------------------------------------------------------------------------------------
// PNG frames
// ---------------------------------------------------------------------------------------------

/// The file name of frame `i` of `n`: `frame_0000.png`, with more digits past 10000 frames.
pub fn frame_file_name(i: usize, n: usize) -> String {
    let digits = n.saturating_sub(1).to_string().len().max(4);
    format!("frame_{i:0digits$}.png")
}

/// Writes `frames` as 8-bit RGB PNGs `frame_0000.png`, `frame_0001.png`, ... (see
/// [`frame_file_name`]) in `folder`, and returns the folder.
///
/// Quantization: rounding, as diffusers' `numpy_to_pil` ([`quantize_round`]).
///
/// A new folder is written whole as a temporary folder beside it, then renamed. Into an existing
/// folder, every PNG is first encoded into a temporary folder inside it, then moved into place
/// (replacing files of the same names; other files, such as frames past this video's length from
/// an earlier export, are left alone).
///
/// ```
/// use diffusers_pipelines::export_utils::export_to_frames;
/// let dir = tempfile::tempdir()?;
/// let frames = vec![1.0f32; 3 * 4 * 4 * 3];
/// let out = export_to_frames(&frames, [3, 4, 4, 3], dir.path().join("frames"))?;
/// assert!(out.join("frame_0002.png").is_file());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn export_to_frames(
    frames: &[f32],
    dims: [usize; 4],
    folder: impl AsRef<Path>,
) -> Result<PathBuf> {
    let folder = folder.as_ref();
    let video = Video::new(frames, dims, folder)?;
    let (w, h) = (
        u32::try_from(video.width).map_err(|_| export_err(folder, "frame too wide"))?,
        u32::try_from(video.height).map_err(|_| export_err(folder, "frame too tall"))?,
    );
    let exists = folder.is_dir();
    let staging_parent = if exists {
        folder.to_path_buf()
    } else {
        match folder.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "frames".into());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(&staging_parent)
        .map_err(|e| io_err(&staging_parent, e))?;
    let names: Vec<String> = (0..video.frames)
        .map(|i| frame_file_name(i, video.frames))
        .collect();
    for (i, file_name) in names.iter().enumerate() {
        let file = staging.path().join(file_name);
        let rgb = quantize_round(video.frame(i));
        let png_err = |e: png::EncodingError| export_err(&file, format!("PNG: {e}"));
        let f = std::fs::File::create(&file).map_err(|e| io_err(&file, e))?;
        let mut out = std::io::BufWriter::new(f);
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(&rgb).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
        out.flush().map_err(|e| io_err(&file, e))?;
    }
    if exists {
        for file_name in &names {
            let to = folder.join(file_name);
            std::fs::rename(staging.path().join(file_name), &to).map_err(|e| io_err(&to, e))?;
        }
    } else {
        let tmp = staging.keep();
        if let Err(e) = std::fs::rename(&tmp, folder) {
            // Best effort: the frames are useless without the rename.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_err(folder, e));
        }
    }
    Ok(folder.to_path_buf())
}
