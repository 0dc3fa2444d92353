//! `export_utils` read back by an independent decoder, Debian's ffmpeg/ffprobe (install with
//! `apt-get install -y ffmpeg`; `.ci/run` does when it is missing): synthetic clips (moving
//! gradients and a moving square, built here) written as MP4, GIF and PNG frames; ffprobe reads
//! the codec, pixel format, size, frame count and rate, ffmpeg decodes to rgb24 and the PSNR
//! against our 8-bit frames is bounded. The 8-bit quantization is checked against diffusers'
//! (oracle stage `export_quantize`). Invalid input writes nothing.

use std::path::Path;
use std::process::Command;

use diffusers_core::testing::Fixture;
use diffusers_pipelines::Error;
use diffusers_pipelines::export_utils::{
    ExportFormat, export, export_tensor, export_to_frames, export_to_gif, export_to_video,
    frame_file_name, quantize_round, quantize_truncate,
};

/// `[frames, height, width, 3]` in `[0, 1]`, smooth as a generated video is: a sine gradient
/// scrolling with the frame index, a red blob moving diagonally and a green band, blended with
/// Gaussian edges. (Hard-edged shapes at odd positions lose up to 16 dB to 4:2:0 chroma alone:
/// ffmpeg's lossless libx264 yuv420p gave 22.1 dB on such a 47x33 clip.)
fn clip(frames: usize, height: usize, width: usize) -> Vec<f32> {
    const RED: [f32; 3] = [0.95, 0.1, 0.2];
    const GREEN: [f32; 3] = [0.2, 0.6, 0.3];
    let (w, h) = (width as f32, height as f32);
    let mut v = Vec::with_capacity(frames * height * width * 3);
    for t in 0..frames {
        let (cx, cy) = (((10 + 3 * t) % width) as f32, ((8 + 2 * t) % height) as f32);
        for y in 0..height {
            for x in 0..width {
                let (fx, fy, ft) = (x as f32, y as f32, t as f32);
                let base = [
                    0.5 + 0.45 * ((fx + 2.0 * ft) * std::f32::consts::TAU / w).sin(),
                    fy / h,
                    0.5 + 0.4 * ((fx + fy) * 0.05 + ft * 0.5).sin(),
                ];
                let blob = (-((fx - cx).powi(2) + (fy - cy).powi(2)) / 32.0).exp();
                let band = (-(fy - 0.7 * h).powi(2) / 8.0).exp();
                for c in 0..3 {
                    let px = base[c] * (1.0 - blob) + blob * RED[c];
                    v.push(px * (1.0 - band) + band * GREEN[c]);
                }
            }
        }
    }
    v
}

/// `ffmpeg`/`ffprobe`, or a failure saying how to install them (never a silent pass).
fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{name}` is needed to decode the exported videos independently and was not found: \
         install it with `apt-get install -y ffmpeg` (Debian/Ubuntu) or put ffmpeg on PATH"
    );
    let mut cmd = Command::new(name);
    cmd.args(["-v", "error"]);
    cmd
}

/// ffprobe's first video stream, frames counted by decoding.
fn probe(path: &Path) -> serde_json::Value {
    let out = tool("ffprobe")
        .args([
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_streams",
            "-print_format",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe {path:?}: {:?}", out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    json["streams"][0].clone()
}

/// The packets' durations in the stream's time base.
fn packet_durations(path: &Path) -> Vec<u64> {
    let out = tool("ffprobe")
        .args([
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe {path:?}: {:?}", out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("packet duration"))
        .collect()
}

/// Every frame decoded by ffmpeg as rgb24.
fn decode_rgb(input: &[&str]) -> Vec<u8> {
    let out = tool("ffmpeg")
        .args(input)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg {input:?}: {:?}", out.stderr);
    out.stdout
}

fn psnr(ours: &[u8], decoded: &[u8]) -> f64 {
    assert_eq!(ours.len(), decoded.len(), "decoded size");
    let mse = ours
        .iter()
        .zip(decoded)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum::<f64>()
        / ours.len() as f64;
    10.0 * (255.0f64.powi(2) / mse.max(1e-12)).log10()
}

/// Our 8-bit frames with the last column/row repeated up to `width x height` (MP4's even size).
fn pad(rgb: &[u8], [frames, h, w]: [usize; 3], width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames * height * width * 3);
    for t in 0..frames {
        for y in 0..height {
            for x in 0..width {
                let i = ((t * h + y.min(h - 1)) * w + x.min(w - 1)) * 3;
                out.extend_from_slice(&rgb[i..i + 3]);
            }
        }
    }
    out
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

struct VideoCase {
    name: &'static str,
    dims: [usize; 4],
    fps: u32,
    /// The size ffprobe must read (odd sides are padded to even).
    size: [usize; 2],
    /// Lowest PSNR (dB) of ffmpeg's decoding against our truncated 8-bit frames.
    min_psnr: f64,
}

#[test]
fn mp4_reads_back_in_ffmpeg() {
    // PSNR of ffmpeg's decoding against our truncated 8-bit frames, measured: 64x48 @ 8 fps
    // 34.34 dB, 47x33 (padded to 48x34) @ 24 fps 32.31 dB, one 48x64 frame @ 1 fps 33.99 dB.
    // Most of the loss is 4:2:0 chroma, not the encoder: the same clips written losslessly by
    // ffmpeg's libx264 in yuv420p decode at 35.6, 33.7 and 35.9 dB. Bound 30 dB as the task asks
    // (a wrong colour matrix or range, or a frame out of place, falls far below).
    let cases = [
        VideoCase {
            name: "clip_64x48_8fps",
            dims: [9, 48, 64, 3],
            fps: 8,
            size: [64, 48],
            min_psnr: 30.0,
        },
        VideoCase {
            name: "odd_47x33_24fps",
            dims: [5, 33, 47, 3],
            fps: 24,
            size: [48, 34],
            min_psnr: 30.0,
        },
        VideoCase {
            name: "portrait_single_frame_1fps",
            dims: [1, 64, 48, 3],
            fps: 1,
            size: [48, 64],
            min_psnr: 30.0,
        },
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for case in &cases {
        let [n, h, w, _] = case.dims;
        let frames = clip(n, h, w);
        let path = dir.path().join(format!("{}.mp4", case.name));
        let written = export_to_video(&frames, case.dims, &path, case.fps).expect(case.name);
        assert_eq!(written, path);
        let s = probe(&path);
        assert_eq!(s["codec_name"], "h264", "{}: {s}", case.name);
        assert_eq!(s["pix_fmt"], "yuv420p", "{}", case.name);
        assert_eq!(s["profile"], "Constrained Baseline", "{}", case.name);
        assert_eq!(s["width"], case.size[0], "{}", case.name);
        assert_eq!(s["height"], case.size[1], "{}", case.name);
        assert_eq!(s["nb_read_frames"], n.to_string(), "{}", case.name);
        assert_eq!(s["nb_frames"], n.to_string(), "{}", case.name);
        let rate = format!("{}/1", case.fps);
        assert_eq!(s["r_frame_rate"], rate, "{}", case.name);
        assert_eq!(s["avg_frame_rate"], rate, "{}", case.name);
        assert_eq!(s["color_range"], "tv", "{}", case.name);
        assert_eq!(s["color_space"], "smpte170m", "{}", case.name);

        let ours = pad(
            &quantize_truncate(&frames),
            [n, h, w],
            case.size[0],
            case.size[1],
        );
        let decoded = decode_rgb(&["-i", path_str(&path)]);
        let p = psnr(&ours, &decoded);
        eprintln!("{}: PSNR {p:.2} dB", case.name);
        assert!(p >= case.min_psnr, "{}: PSNR {p:.2} dB", case.name);
    }
}

#[test]
fn gif_reads_back_in_ffmpeg() {
    // (name, dims, fps, delay in 1/100 s = (1000 // fps) / 10 truncated as PIL, lowest PSNR).
    // PSNR of ffmpeg's decoding against our rounded 8-bit frames (median cut, 256 colours per
    // frame, no dithering), measured: 64x48 32.26 dB, 31x17 38.20 dB; diffusers' own
    // export_to_gif (PIL) on the same clips: 29.87 and 33.67 dB. Bound 30 dB.
    let cases: [(&str, [usize; 4], u32, u64, f64); 2] = [
        ("clip_64x48_8fps", [9, 48, 64, 3], 8, 12, 30.0),
        ("odd_31x17_30fps", [4, 17, 31, 3], 30, 3, 30.0),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, dims, fps, delay, min_psnr) in cases {
        let [n, h, w, _] = dims;
        let frames = clip(n, h, w);
        let path = dir.path().join(format!("{name}.gif"));
        export_to_gif(&frames, dims, &path, fps).expect(name);
        let s = probe(&path);
        assert_eq!(s["codec_name"], "gif", "{name}: {s}");
        assert_eq!(s["width"], w, "{name}");
        assert_eq!(s["height"], h, "{name}");
        assert_eq!(s["nb_read_frames"], n.to_string(), "{name}");
        assert_eq!(s["time_base"], "1/100", "{name}");
        assert_eq!(packet_durations(&path), vec![delay; n], "{name}");
        // Loops forever: the NETSCAPE2.0 application extension with a loop count of 0.
        let bytes = std::fs::read(&path).expect("read gif");
        let at = bytes
            .windows(11)
            .position(|win| win == b"NETSCAPE2.0")
            .expect("NETSCAPE2.0 loop extension");
        assert_eq!(
            bytes[at + 11..at + 15],
            [3, 1, 0, 0],
            "{name}: loop count 0"
        );

        let decoded = decode_rgb(&["-i", path_str(&path)]);
        let p = psnr(&quantize_round(&frames), &decoded);
        eprintln!("{name}: PSNR {p:.2} dB");
        assert!(p >= min_psnr, "{name}: PSNR {p:.2} dB");
    }
}

#[test]
fn png_frames_are_exact() {
    let dims = [9, 48, 64, 3];
    let frames = clip(9, 48, 64);
    let ours = quantize_round(&frames);
    let dir = tempfile::tempdir().expect("tempdir");
    // A new folder (written beside it, then renamed), then the same into the existing folder.
    let folder = dir.path().join("frames");
    for round in ["new folder", "existing folder"] {
        let out = export_to_frames(&frames, dims, &folder).expect(round);
        assert_eq!(out, folder);
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let want: Vec<String> = (0..9).map(|i| format!("frame_{i:04}.png")).collect();
        assert_eq!(names, want, "{round}: no temporary files left");
        let pattern = folder.join("frame_%04d.png");
        let decoded = decode_rgb(&["-i", path_str(&pattern)]);
        assert!(decoded == ours, "{round}: PNG pixels differ from ours");
    }
    assert_eq!(frame_file_name(3, 10), "frame_0003.png");
    assert_eq!(frame_file_name(3, 12345), "frame_00003.png");
}

#[test]
fn quantization_matches_diffusers() {
    let fx = Fixture::open("pipelines/export_quantize");
    let values = fx.values("quantize.values");
    let as_u8 = |key: &str| -> Vec<u8> { fx.values(key).iter().map(|&v| v as u8).collect() };
    // Exact: both are one f32 multiply and a cast, as numpy does.
    assert_eq!(quantize_truncate(&values), as_u8("quantize.truncate"));
    assert_eq!(quantize_round(&values), as_u8("quantize.round"));
}

#[test]
fn export_chooses_by_path_and_tensor_wrapper() {
    use burn::tensor::{Tensor, TensorData};
    use diffusers_core::backend::Cpu;
    let dims = [3, 16, 24, 3];
    let frames = clip(3, 16, 24);
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("a.mp4", ExportFormat::Mp4, "h264"),
        ("b.GIF", ExportFormat::Gif, "gif"),
        ("c", ExportFormat::Frames, "png"),
    ];
    for (name, format, codec) in cases {
        let path = dir.path().join(name);
        assert_eq!(ExportFormat::from_path(&path).expect(name), format);
        let tensor =
            Tensor::<Cpu, 4>::from_data(TensorData::new(frames.clone(), dims), &Default::default());
        export_tensor(&tensor, &path, 8).expect(name);
        let probed = if format == ExportFormat::Frames {
            path.join("frame_0000.png")
        } else {
            path.clone()
        };
        assert_eq!(probe(&probed)["codec_name"], codec, "{name}");
    }
    // An existing directory is a PNG folder whatever its name.
    let existing = dir.path().join("frames.v2");
    std::fs::create_dir(&existing).expect("mkdir");
    assert_eq!(
        ExportFormat::from_path(&existing).expect("dir"),
        ExportFormat::Frames
    );
}

/// (case, values, dims, file name, fps, words the error must hold)
type BadInput<'a> = (&'a str, &'a [f32], [usize; 4], &'a str, u32, &'a str);

#[test]
fn invalid_input_writes_nothing() {
    let good = clip(2, 8, 8);
    let mut nan = good.clone();
    nan[100] = f32::NAN;
    let mut inf = good.clone();
    inf[7] = f32::INFINITY;
    let four = vec![0.5f32; 2 * 8 * 8 * 4];
    let cases: [BadInput; 11] = [
        (
            "bad extension",
            &good,
            [2, 8, 8, 3],
            "x.avi",
            8,
            "unknown video extension",
        ),
        ("empty mp4", &[], [0, 8, 8, 3], "x.mp4", 8, "no frames"),
        ("empty gif", &[], [0, 8, 8, 3], "x.gif", 8, "no frames"),
        ("empty folder", &[], [0, 8, 8, 3], "x", 8, "no frames"),
        ("zero width", &[], [2, 8, 0, 3], "x.mp4", 8, "no frames"),
        (
            "four channels",
            &four,
            [2, 8, 8, 4],
            "x.mp4",
            8,
            "4 channels",
        ),
        (
            "four channels png",
            &four,
            [2, 8, 8, 4],
            "x",
            8,
            "4 channels",
        ),
        (
            "dims vs values",
            &good,
            [3, 8, 8, 3],
            "x.gif",
            8,
            "need 576 values",
        ),
        (
            "nan",
            &nan,
            [2, 8, 8, 3],
            "x.mp4",
            8,
            "frame 0, row 4, column 1, channel 1",
        ),
        ("infinity", &inf, [2, 8, 8, 3], "x", 8, "not finite"),
        ("fps 0", &good, [2, 8, 8, 3], "x.mp4", 0, "fps"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (case, values, dims, name, fps, words) in cases {
        let err = export(values, dims, dir.path().join(name), fps).expect_err(case);
        assert!(matches!(err, Error::Export { .. }), "{case}: {err:?}");
        assert!(err.to_string().contains(words), "{case}: {err}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "{case}: wrote {left:?}");
    }
    // A folder that does not exist: an I/O error naming it, nothing created.
    let missing = dir.path().join("missing/x.mp4");
    let err = export(&good, [2, 8, 8, 3], &missing, 8).expect_err("missing folder");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(!dir.path().join("missing").exists());
}
