//! Measures every model variant of the manifest against its fp32 original, in one run on one
//! machine: file size, load time, tract latency at the daemon's batch sizes (as ratios to the
//! original, measured interleaved), peak RSS (one child process per variant), and quality vs the
//! original on evaluation inputs that are not the calibration inputs (mean cosine, Spearman of
//! all pairwise similarities). Writes a Markdown section into docs/models.md.
//!
//! Run through `models/report` (which builds this example with optimised dependencies).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use edgefuse::encoders::quality::agreement;
use edgefuse::encoders::{AudioEncoder, Modality, TextEncoder, VisionEncoder};
use edgefuse::manifest::Manifest;

const BEGIN: &str = "<!-- models/report: begin (generated, do not edit) -->";
const END: &str = "<!-- models/report: end -->";
/// Quality a variant must keep to be eligible as a default.
const MIN_SPEARMAN: f64 = 0.98;
const MIN_COSINE: f64 = 0.98;

/// The daemon's batch sizes (configs/default.toml `max_batch`) and single items.
fn batches(m: Modality) -> [usize; 2] {
    match m {
        Modality::Text => [1, 16],
        Modality::Vision => [1, 4],
        Modality::Audio => [1, 16],
    }
}

enum Enc {
    Text(Box<TextEncoder>),
    Vision(Box<VisionEncoder>),
    Audio(Box<AudioEncoder>),
}

struct Inputs {
    texts: Vec<String>,
    images: Vec<Vec<u8>>,
    wavs: Vec<Vec<u8>>,
    /// 44.1 kHz samples long enough for exactly n blocks, per batch size.
    audio_for_blocks: Vec<(usize, Vec<f32>)>,
}

impl Enc {
    fn load(m: &Manifest, key: &str, modality: Modality) -> Result<Enc> {
        let [_, max] = batches(modality);
        Ok(match modality {
            Modality::Text => Enc::Text(Box::new(TextEncoder::load(m, key, None, None, max)?)),
            Modality::Vision => Enc::Vision(Box::new(VisionEncoder::load(
                m, key, None, max, 40_000_000,
            )?)),
            Modality::Audio => Enc::Audio(Box::new(AudioEncoder::load(m, key, None, max, 600.0)?)),
        })
    }

    fn load_ms(&self) -> f64 {
        match self {
            Enc::Text(e) => e.model.load_ms,
            Enc::Vision(e) => e.image.model.load_ms,
            Enc::Audio(e) => e.model.load_ms,
        }
    }

    /// Evaluation embeddings (audio: every block of every clip).
    fn evaluate(&self, inp: &Inputs) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        match self {
            Enc::Text(e) => {
                let t: Vec<&str> = inp.texts.iter().map(String::as_str).collect();
                for r in e.embed(&t) {
                    out.push(r?.vector);
                }
            }
            Enc::Vision(e) => {
                let b: Vec<&[u8]> = inp.images.iter().map(Vec::as_slice).collect();
                for r in e.embed(&b) {
                    out.push(r?.vector);
                }
            }
            Enc::Audio(e) => {
                let b: Vec<&[u8]> = inp.wavs.iter().map(Vec::as_slice).collect();
                for r in e.embed_wavs(&b) {
                    out.extend(r?.blocks.unwrap_or_default());
                }
            }
        }
        Ok(out)
    }

    /// Inference milliseconds (tract run only) for one batch of `n` items.
    fn time_batch(&self, inp: &Inputs, n: usize) -> Result<f64> {
        let emb = match self {
            Enc::Text(e) => {
                let t: Vec<&str> = inp.texts.iter().take(n).map(String::as_str).collect();
                e.embed(&t).into_iter().collect::<Result<Vec<_>, _>>()?
            }
            Enc::Vision(e) => {
                let b: Vec<&[u8]> = inp.images.iter().take(n).map(Vec::as_slice).collect();
                e.embed(&b).into_iter().collect::<Result<Vec<_>, _>>()?
            }
            Enc::Audio(e) => {
                let (_, s) = inp
                    .audio_for_blocks
                    .iter()
                    .find(|(k, _)| *k == n)
                    .context("no audio for this batch size")?;
                let r = e.embed_samples(s, 44_100)?;
                let blocks = r.blocks.as_ref().map_or(0, Vec::len);
                if blocks != n {
                    bail!("audio produced {blocks} blocks, wanted {n}");
                }
                vec![r]
            }
        };
        // Batched stages share their time equally among items: the sum is the batch's time.
        let per_item: f64 = emb.iter().map(|e| e.timings.inference_ms).sum();
        Ok(per_item)
    }
}

fn inputs(repo: &Path) -> Result<Inputs> {
    let texts: Vec<String> =
        std::fs::read_to_string(repo.join("tests/fixtures/eval/sentences.txt"))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
    let read = |p: PathBuf| std::fs::read(&p).with_context(|| p.display().to_string());
    // The evaluation lists are shared with tests/integration/variants.rs.
    let list = |name: &str| -> Result<Vec<String>> {
        let p = repo.join("tests/fixtures/eval").join(name);
        let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    };
    let images = list("images.txt")?
        .iter()
        .map(|f| read(repo.join("tests/fixtures/images").join(f)))
        .collect::<Result<_>>()?;
    let wavs = list("audio.txt")?
        .iter()
        .map(|f| read(repo.join("tests/fixtures/audio").join(f)))
        .collect::<Result<_>>()?;
    // A deterministic sound whose length gives exactly n blocks of 100 frames with 50 % hop:
    // frames = 1 + len / 1024, blocks = 1 + (frames - 100) / 50.
    let audio_for_blocks = batches(Modality::Audio)
        .iter()
        .map(|&n| {
            let frames = 100 + (n - 1) * 50;
            let len = (frames - 1) * 1024;
            let s = (0..len)
                .map(|i| {
                    let t = i as f32 / 44_100.0;
                    (2.0 * std::f32::consts::PI * 440.0 * t).sin() * 0.5
                        + (2.0 * std::f32::consts::PI * 97.0 * t * (1.0 + t)).sin() * 0.3
                })
                .collect();
            (n, s)
        })
        .collect();
    Ok(Inputs {
        texts,
        images,
        wavs,
        audio_for_blocks,
    })
}

fn modality_of(s: &str) -> Option<Modality> {
    Modality::ALL.into_iter().find(|m| m.as_str() == s)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

struct Row {
    key: String,
    method: String,
    quantization: String,
    mb: f64,
    load_ms: f64,
    lat: Vec<f64>,
    rss_mb: f64,
    mean_cos: f64,
    min_cos: f64,
    spearman: f64,
}

/// Child mode: load one model, run one full batch, report load time and peak RSS.
fn child(models: &Path, key: &str, modality: Modality, repo: &Path) -> Result<()> {
    let m = Manifest::load(&models.join("manifest.toml"))?;
    let inp = inputs(repo)?;
    let enc = Enc::load(&m, key, modality)?;
    enc.time_batch(&inp, batches(modality)[1])?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    println!("{} {}", enc.load_ms(), hwm / 1024.0);
    Ok(())
}

fn status_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Memory mode (`--memory KEY MODALITY`): what one model holds. Prints, in MiB: RSS before
/// loading, RSS once loaded and the heap trimmed (as the daemon does after loading), RSS after
/// one item (batch 1) and trimming again, and the peak (VmHWM, loading included).
fn memory(models: &Path, key: &str, modality: Modality, repo: &Path) -> Result<()> {
    let m = Manifest::load(&models.join("manifest.toml"))?;
    let inp = inputs(repo)?;
    edgefuse::cpu::trim_heap();
    let start = status_kb("VmRSS:");
    let enc = Enc::load(&m, key, modality)?;
    edgefuse::cpu::trim_heap();
    let loaded = status_kb("VmRSS:");
    enc.time_batch(&inp, 1)?;
    edgefuse::cpu::trim_heap();
    let after = status_kb("VmRSS:");
    let hwm = status_kb("VmHWM:");
    println!(
        "{:.1} {:.1} {:.1} {:.1}",
        start / 1024.0,
        loaded / 1024.0,
        after / 1024.0,
        hwm / 1024.0
    );
    Ok(())
}

fn main() -> Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1);
    let mut models = repo.join("models");
    let mut write: Option<PathBuf> = None;
    let mut reps = 5usize;
    let mut only: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--models" => models = args.next().context("--models DIR")?.into(),
            "--write" => write = Some(args.next().context("--write FILE")?.into()),
            "--reps" => reps = args.next().context("--reps N")?.parse()?,
            "--modality" => only.push(args.next().context("--modality NAME")?),
            "--memory" => {
                let key = args.next().context("--memory KEY MODALITY")?;
                let m = args
                    .next()
                    .and_then(|s| modality_of(&s))
                    .context("modality")?;
                return memory(&models, &key, m, &repo);
            }
            "--child" => {
                let key = args.next().context("--child KEY MODALITY")?;
                let m = args
                    .next()
                    .and_then(|s| modality_of(&s))
                    .context("modality")?;
                return child(&models, &key, m, &repo);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let manifest = Manifest::load(&models.join("manifest.toml"))?;
    let inp = inputs(&repo)?;
    let exe = std::env::current_exe()?;
    let mut md = String::new();
    md.push_str(&format!(
        "{BEGIN}\n\nMeasured by `models/report` on {} ({} logical CPUs, `{}`), one tract thread, \
         {reps} interleaved repetitions (median). Latency is tract inference only, as a ratio to \
         the fp32 original measured in the same run (lower is faster); absolute fp32 times are \
         in the first row. Quality is vs the fp32 original on the evaluation inputs \
         (text: the {} sentences of `tests/fixtures/eval/sentences.txt`; vision: the {} photos of \
         `tests/fixtures/images`; audio: every 2.3 s block of the {} clips of \
         `tests/fixtures/audio`), none of which is a calibration input. RSS is the peak of a fresh \
         process that loads the one model and runs one full batch.\n",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        inp.texts.len(),
        inp.images.len(),
        inp.wavs.len(),
    ));
    for modality in Modality::ALL {
        if !only.is_empty() && !only.iter().any(|o| o == modality.as_str()) {
            continue;
        }
        let root = modality.as_str();
        let mut keys: Vec<String> = vec![root.to_owned()];
        keys.extend(
            manifest
                .models
                .iter()
                .filter(|(k, s)| {
                    s.modality == root && k.as_str() != root && manifest.root_of(k) == root
                })
                .map(|(k, _)| k.clone()),
        );
        eprintln!("[report] {root}: {}", keys.join(", "));
        let encs: Vec<Enc> = keys
            .iter()
            .map(|k| Enc::load(&manifest, k, modality).with_context(|| k.clone()))
            .collect::<Result<_>>()?;
        let evals: Vec<Vec<Vec<f32>>> = encs
            .iter()
            .map(|e| e.evaluate(&inp))
            .collect::<Result<_>>()?;
        // Interleaved timing: every variant once per repetition, so drift hits all alike.
        let bs = batches(modality);
        let mut times = vec![vec![Vec::new(); bs.len()]; encs.len()];
        for e in &encs {
            for &b in &bs {
                e.time_batch(&inp, b)?; // warm-up
            }
        }
        for _ in 0..reps {
            for (i, e) in encs.iter().enumerate() {
                for (j, &b) in bs.iter().enumerate() {
                    times[i][j].push(e.time_batch(&inp, b)?);
                }
            }
        }
        let mut rows = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let spec = manifest.model(key)?;
            let file = manifest.path_of(&spec.file);
            let mb = std::fs::metadata(&file)?.len() as f64 / 1e6;
            let out = Command::new(&exe)
                .args(["--models"])
                .arg(&models)
                .args(["--child", key, root])
                .output()?;
            if !out.status.success() {
                bail!("child for {key}: {}", String::from_utf8_lossy(&out.stderr));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text.split_whitespace().map(|s| s.parse::<f64>());
            let load_ms = it.next().context("load_ms")??;
            let rss_mb = it.next().context("rss")??;
            let q = agreement(&evals[0], &evals[i]);
            rows.push(Row {
                key: key.clone(),
                method: spec.optimize_method().unwrap_or("original").to_owned(),
                quantization: spec.quantization.clone(),
                mb,
                load_ms,
                lat: times[i].iter_mut().map(|t| median(t)).collect(),
                rss_mb,
                mean_cos: q.mean_cosine,
                min_cos: q.min_cosine,
                spearman: q.spearman,
            });
            eprintln!("[report]   {key}: done");
        }
        md.push_str(&table(modality, &rows, &bs, evals[0].len()));
    }
    md.push_str(&format!("\n{END}\n"));
    match write {
        Some(path) => {
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            let new = match (old.find(BEGIN), old.find(END)) {
                (Some(a), Some(b)) if b > a => {
                    format!("{}{}{}", &old[..a], md.trim_end(), &old[b + END.len()..])
                }
                _ => format!("{}\n{md}", old.trim_end()),
            };
            std::fs::write(&path, new)?;
            eprintln!("[report] wrote {}", path.display());
        }
        None => print!("{md}"),
    }
    Ok(())
}

fn table(modality: Modality, rows: &[Row], bs: &[usize], n_eval: usize) -> String {
    let base = &rows[0];
    let mut s = format!(
        "\n### {modality} ({n_eval} evaluation embeddings, {} pairs)\n\n\
         | variant | method | quantization | file MB | smaller | load ms |{} peak RSS MB | mean cos | min cos | Spearman | eligible |\n\
         |---|---|---|---|---|---|{}---|---|---|---|---|\n",
        n_eval * (n_eval - 1) / 2,
        bs.iter()
            .map(|b| format!(" latency b={b} |"))
            .collect::<String>(),
        "---|".repeat(bs.len()),
    );
    let ratio = |r: &Row| r.lat[bs.len() - 1] / base.lat[bs.len() - 1];
    let eligible = |r: &Row| r.spearman >= MIN_SPEARMAN && r.mean_cos >= MIN_COSINE;
    // Fastest eligible; variants within the timing noise of it (10 %) count as equally fast,
    // and the smallest file among those wins.
    let fastest = rows
        .iter()
        .filter(|r| eligible(r))
        .map(ratio)
        .fold(f64::INFINITY, f64::min);
    let best = rows
        .iter()
        .filter(|r| eligible(r) && ratio(r) <= fastest * 1.10)
        .min_by(|a, b| a.mb.total_cmp(&b.mb))
        .map(|r| (r, ratio(r)));
    for r in rows {
        let eligible = eligible(r);
        let lat: String = r
            .lat
            .iter()
            .zip(&base.lat)
            .map(|(l, b)| {
                if std::ptr::eq(r, base) {
                    format!(" 1.00 ({l:.1} ms) |")
                } else {
                    format!(" {:.2} |", l / b)
                }
            })
            .collect();
        s.push_str(&format!(
            "| `{}` | {} | {} | {:.1} | {:.2}× | {:.0} |{lat} {:.0} | {:.4} | {:.4} | {:.4} | {} |\n",
            r.key,
            r.method,
            r.quantization,
            r.mb,
            base.mb / r.mb,
            r.load_ms,
            r.rss_mb,
            r.mean_cos,
            r.min_cos,
            r.spearman,
            if eligible { "yes" } else { "no" },
        ));
    }
    if let Some((r, ratio)) = best {
        s.push_str(&format!(
            "\nChoice by the numbers (eligible: Spearman ≥ {MIN_SPEARMAN} and mean cos ≥ \
             {MIN_COSINE}; fastest at b={}, ties within 10 % broken by size): `{}`, {:.2}× the \
             fp32 latency, {:.2}× smaller.\n",
            bs[bs.len() - 1],
            r.key,
            ratio,
            base.mb / r.mb
        ));
    }
    s
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
