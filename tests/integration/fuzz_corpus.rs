//! The cargo-fuzz corpora (`fuzz/corpus/<target>/`) replayed through the same entry points as
//! the fuzz targets, on the stable toolchain: every input must come back as `Ok` or a refusal,
//! never a panic. `fuzz/run` grows the corpora; `write_seed_corpus` (ignored) writes the seeds.

use crate::util;
use std::path::{Path, PathBuf};

use edgefuse::fuzz_entry;

type Entry = fn(&[u8]) -> Result<(), String>;

const TARGETS: [(&str, Entry); 4] = [
    ("payload", fuzz_entry::payload),
    ("wav", fuzz_entry::wav_bytes),
    ("image", fuzz_entry::image_bytes),
    ("config", fuzz_entry::config),
];

fn corpus(target: &str) -> PathBuf {
    util::repo().join("fuzz/corpus").join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(target: &str, entry: Entry) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for path in files(&corpus(target)) {
        let data = std::fs::read(&path).unwrap();
        // A panic names the file, so it can be rerun with `cargo +nightly fuzz run <target> FILE`.
        let r = std::panic::catch_unwind(|| entry(&data))
            .unwrap_or_else(|_| panic!("{target}: {} panicked", path.display()));
        match r {
            Ok(()) => ok += 1,
            Err(reason) => {
                assert!(!reason.is_empty(), "{}: empty reason", path.display());
                refused += 1;
            }
        }
    }
    (ok, refused)
}

#[test]
fn payload_corpus_replays_without_panics() {
    let (ok, refused) = replay("payload", fuzz_entry::payload);
    // The corpus holds both kinds; if either vanished the corpus lost its seeds.
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

#[test]
fn wav_corpus_replays_without_panics() {
    let (ok, refused) = replay("wav", fuzz_entry::wav_bytes);
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

#[test]
fn image_corpus_replays_without_panics() {
    let (ok, refused) = replay("image", fuzz_entry::image_bytes);
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

#[test]
fn config_corpus_replays_without_panics() {
    let (ok, refused) = replay("config", fuzz_entry::config);
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

#[test]
fn every_fuzz_target_has_a_corpus() {
    for (target, _) in TARGETS {
        assert!(
            util::repo()
                .join(format!("fuzz/fuzz_targets/{target}.rs"))
                .exists(),
            "{target}"
        );
        assert!(!files(&corpus(target)).is_empty(), "{target}");
    }
}

/// Without nightly: seeded libFuzzer-style mutations of each corpus through its entry point.
/// Not coverage-guided, so no substitute for `fuzz/run`, but it needs only stable Rust.
/// `EDGEFUSE_MUTATIONS=100000 cargo test --release --test integration fuzz_corpus:: -- --ignored mutations`
#[test]
#[ignore]
fn mutations_of_the_corpora_do_not_panic() {
    let n: usize = std::env::var("EDGEFUSE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let all: Vec<Vec<u8>> = TARGETS
        .iter()
        .flat_map(|(t, _)| files(&corpus(t)))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    for (target, entry) in TARGETS {
        let seeds: Vec<Vec<u8>> = files(&corpus(target))
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let mut rng = util::mutate::Rng(0x0123_4567_89AB_CDEF);
        let (mut ok, mut refused) = (0, 0);
        for i in 0..n {
            let data = util::mutate::mutate_one(&mut rng, &seeds, &all);
            match std::panic::catch_unwind(|| entry(&data)) {
                Ok(Ok(())) => ok += 1,
                Ok(Err(_)) => refused += 1,
                Err(_) => {
                    let dump = std::env::temp_dir().join(format!("edgefuse-{target}-{i}.bin"));
                    std::fs::write(&dump, &data).unwrap();
                    panic!(
                        "{target}: mutation {i} panicked; input in {}",
                        dump.display()
                    );
                }
            }
        }
        eprintln!("{target}: {n} mutations, {ok} accepted, {refused} refused, 0 panics");
    }
}

// ------------------------------------------------------------------ seeds

fn small_image() -> image::RgbImage {
    let full = image::load_from_memory(&util::fixture("tests/fixtures/images/chelsea.jpg"))
        .unwrap()
        .into_rgb8();
    image::imageops::resize(&full, 24, 16, image::imageops::FilterType::Triangle)
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

fn wav(channels: u16, rate: u32, bits: u16, float: bool, frames: usize) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
        for i in 0..frames * usize::from(channels) {
            let x = ((i as f64) * 0.05).sin() * 0.5;
            if float {
                w.write_sample(x as f32).unwrap();
            } else {
                let full = (1i64 << (bits - 1)) as f64;
                w.write_sample((x * full) as i32).unwrap();
            }
        }
        w.finalize().unwrap();
    }
    buf.into_inner()
}

/// Seed inputs: small valid files of each kind and a few classic bad ones. Run once with
/// `cargo test --test integration fuzz_corpus:: -- --ignored write_seed_corpus`; fuzzing grows from here.
#[test]
#[ignore]
fn write_seed_corpus() {
    use image::ImageFormat as F;
    let rgb = image::DynamicImage::ImageRgb8(small_image());
    let mut images: Vec<(String, Vec<u8>)> = [
        ("jpg", F::Jpeg),
        ("png", F::Png),
        ("webp", F::WebP),
        ("gif", F::Gif),
        ("bmp", F::Bmp),
        ("tiff", F::Tiff),
        ("ico", F::Ico),
        ("tga", F::Tga),
        ("ppm", F::Pnm),
        ("qoi", F::Qoi),
        ("hdr", F::Hdr),
        ("exr", F::OpenExr),
        ("ff", F::Farbfeld),
    ]
    .into_iter()
    .filter_map(|(ext, f)| {
        let img = match f {
            F::Hdr | F::OpenExr => image::DynamicImage::ImageRgb32F(rgb.to_rgb32f()),
            F::Farbfeld => image::DynamicImage::ImageRgba16(rgb.to_rgba16()),
            _ => rgb.clone(),
        };
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, f).ok()?;
        Some((ext.to_string(), buf.into_inner()))
    })
    .collect();
    let jpg = encode(&rgb, F::Jpeg);
    images.push(("truncated.jpg".into(), jpg[..jpg.len() / 2].to_vec()));
    images.push(("exif6.jpg".into(), {
        // The EXIF-rotated fixture, cut down to its headers plus a tiny scan.
        let f = util::fixture("tests/fixtures/images/chelsea_exif6.jpg");
        f[..f.len().min(2048)].to_vec()
    }));
    images.push(("garbage".into(), b"not an image at all".to_vec()));

    let wavs: Vec<(String, Vec<u8>)> = vec![
        ("s16_8k_mono".into(), wav(1, 8000, 16, false, 64)),
        ("s24_48k_stereo".into(), wav(2, 48000, 24, false, 64)),
        ("s32_44k".into(), wav(1, 44100, 32, false, 64)),
        ("u8_11k".into(), wav(1, 11025, 8, false, 64)),
        ("f32_16k".into(), wav(1, 16000, 32, true, 64)),
        ("six_channels".into(), wav(6, 22050, 16, false, 16)),
        (
            "truncated".into(),
            wav(1, 8000, 16, false, 64)[..80].to_vec(),
        ),
        ("header_only".into(), wav(1, 8000, 16, false, 0)),
        ("not_wav".into(), b"RIFF\x10\x00\x00\x00WAVEjunk".to_vec()),
    ];

    let configs: Vec<(String, Vec<u8>)> = ["default.toml", "pi-mic-camera.toml"]
        .iter()
        .map(|f| (f.to_string(), util::fixture(&format!("configs/{f}"))))
        .chain([
            ("empty.toml".into(), Vec::new()),
            (
                "bad_values.toml".into(),
                b"[encoders.text]\nmax_length = 0\n[mqtt]\nbroker = \"tcp://x\"\nqos = 7\n"
                    .to_vec(),
            ),
            ("unknown_key.toml".into(), b"[mqtt]\nbrokr = 1\n".to_vec()),
            ("syntax.toml".into(), b"[mqtt\nbroker = ".to_vec()),
        ])
        .collect();

    // payload: byte 0 = topic (fuzz_entry::TOPICS), byte 1 = flags, then the payload.
    let mut payloads: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, topic: u8, flags: u8, corr: &[u8], body: &[u8]| {
        let mut v = vec![topic, flags];
        if flags & 2 != 0 {
            v.push(corr.len() as u8);
            v.extend_from_slice(corr);
        }
        v.extend_from_slice(body);
        payloads.push((name.to_owned(), v));
    };
    add("text", 0, 0, b"", b"the kettle is boiling");
    add(
        "text_json",
        0,
        1,
        b"",
        br#"{"id":"t-1","text":"hello","group":"g"}"#,
    );
    add("text_json_bad", 0, 0, b"", br#"{"text": 5}"#);
    add(
        "text_json_id_number",
        0,
        0,
        b"",
        br#"{"id": 7, "text": "x"}"#,
    );
    add("text_bad_utf8", 0, 2, b"corr-1", b"\xff\xfe\xfd");
    add("text_empty", 0, 0, b"", b"");
    add("image_jpg", 1, 2, b"img-1", &jpg);
    add("image_garbage", 1, 0, b"", b"nope");
    add(
        "audio_wav",
        2,
        2,
        &[0, 159, 146, 150],
        &wav(1, 8000, 16, false, 32),
    );
    add("audio_text", 2, 0, b"", b"hello");
    add("enroll_text", 3, 0, b"", b"kitchen lights");
    add("enroll_image", 3, 0, b"", &jpg);
    add("forget", 4, 0, b"", b"");
    add("unknown", 5, 0, b"", b"x");
    add("deeper", 6, 0, b"", b"x");
    add("label_slash", 7, 0, b"", b"x");
    add("elsewhere", 250, 0, b"", b"x");

    for (target, seeds) in [
        ("image", images),
        ("wav", wavs),
        ("config", configs),
        ("payload", payloads),
    ] {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}
