//! Measures the multilingual text encoder (`text-multilingual`, multilingual-e5-small) against
//! the English-only default (`text`, all-MiniLM-L6-v2), both run through tract by the daemon's
//! own `TextEncoder`, in one run on one machine:
//!
//! - cross-lingual retrieval on `tests/fixtures/text/translations.tsv`: for every non-English
//!   sentence, the rank of its English translation among all English sentences (recall@1, MRR),
//!   per language;
//! - English agreement: Spearman correlation of the pairwise cosines of the English sentences,
//!   e5 vs MiniLM, and how often both give the same nearest neighbour;
//! - speed: wall-clock milliseconds per sentence (tokenizer, tract, pooling) at batch 1 and 16,
//!   interleaved repetitions, as a ratio e5 / MiniLM;
//! - peak RSS of a fresh process that loads one model and embeds every sentence at batch 16.
//!
//! Writes a Markdown block into docs/models.md between the markers below (or prints it).
//! Run through `models/report_multilingual`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use edgefuse::encoders::quality::{pairwise_cosines, spearman};
use edgefuse::encoders::{cosine, TextEncoder, TextRole};
use edgefuse::manifest::Manifest;

const BEGIN: &str = "<!-- models/report_multilingual: begin (generated, do not edit) -->";
const END: &str = "<!-- models/report_multilingual: end -->";
const FIXTURE: &str = "tests/fixtures/text/translations.tsv";
const MINILM: &str = "text";
const E5: &str = "text-multilingual";
/// The daemon's text batch size (configs/default.toml `max_batch`) and single items.
const BATCHES: [usize; 2] = [1, 16];

/// English sentences and, per language, their translations in the same order.
struct Fixture {
    english: Vec<String>,
    langs: Vec<(String, Vec<String>)>,
}

impl Fixture {
    fn pairs(&self) -> usize {
        self.langs.iter().map(|(_, t)| t.len()).sum()
    }

    fn all_sentences(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.english.iter().map(String::as_str).collect();
        for (_, t) in &self.langs {
            v.extend(t.iter().map(String::as_str));
        }
        v
    }
}

fn read_fixture(path: &Path) -> Result<Fixture> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
    let (_, header) = lines.next().context("translations.tsv: no header")?;
    let cols: Vec<&str> = header.split('\t').collect();
    ensure!(
        cols.first() == Some(&"en") && cols.len() >= 2,
        "translations.tsv: the header must start with `en` and name at least one other language"
    );
    let mut rows: Vec<Vec<String>> = vec![Vec::new(); cols.len()];
    for (n, line) in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        ensure!(
            cells.len() == cols.len(),
            "translations.tsv line {}: {} columns, the header has {}",
            n + 1,
            cells.len(),
            cols.len()
        );
        for (i, c) in cells.iter().enumerate() {
            ensure!(
                !c.trim().is_empty(),
                "translations.tsv line {}: empty {}",
                n + 1,
                cols[i]
            );
            rows[i].push((*c).to_owned());
        }
    }
    let mut it = rows.into_iter();
    let english = it.next().unwrap_or_default();
    let langs = cols[1..].iter().map(|c| (*c).to_owned()).zip(it).collect();
    Ok(Fixture { english, langs })
}

fn embed(enc: &TextEncoder, texts: &[&str], role: TextRole) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(BATCHES[1]) {
        for r in enc.embed_as(chunk, role) {
            out.push(r?.vector);
        }
    }
    Ok(out)
}

/// 1-based rank of `english[i]` for the query `v` (ties count against it).
fn rank(v: &[f32], english: &[Vec<f32>], i: usize) -> usize {
    let own = cosine(v, &english[i]);
    1 + english
        .iter()
        .enumerate()
        .filter(|&(j, e)| j != i && cosine(v, e) >= own)
        .count()
}

fn best(v: &[f32], english: &[Vec<f32>]) -> usize {
    (0..english.len())
        .max_by(|&a, &b| cosine(v, &english[a]).total_cmp(&cosine(v, &english[b])))
        .unwrap_or(0)
}

/// One retrieval setting: a model and the roles the two sides are embedded with.
struct Setting {
    label: &'static str,
    key: &'static str,
    translation_role: TextRole,
    english_role: TextRole,
}

struct Retrieval {
    /// Per language: (hits at rank 1, pairs, MRR).
    per_lang: Vec<(usize, usize, f64)>,
    all: (usize, usize, f64),
    /// Mean cosine of a translation with its English sentence, and with the other ones.
    own_cos: f64,
    other_cos: f64,
    /// (language, translation, English it matched instead).
    misses: Vec<(String, String, String)>,
}

fn retrieval(enc: &TextEncoder, s: &Setting, fx: &Fixture) -> Result<Retrieval> {
    let en: Vec<&str> = fx.english.iter().map(String::as_str).collect();
    let english = embed(enc, &en, s.english_role)?;
    let (mut per_lang, mut misses) = (Vec::new(), Vec::new());
    let (mut hits, mut rr) = (0usize, 0.0f64);
    let (mut own, mut other, mut n_other) = (0.0f64, 0.0f64, 0usize);
    for (lang, sents) in &fx.langs {
        let t: Vec<&str> = sents.iter().map(String::as_str).collect();
        let v = embed(enc, &t, s.translation_role)?;
        let (mut h, mut r) = (0usize, 0.0f64);
        for (i, vi) in v.iter().enumerate() {
            let k = rank(vi, &english, i);
            for (j, e) in english.iter().enumerate() {
                let c = f64::from(cosine(vi, e));
                if j == i {
                    own += c;
                } else {
                    other += c;
                    n_other += 1;
                }
            }
            r += 1.0 / k as f64;
            if k == 1 {
                h += 1;
            } else {
                misses.push((
                    lang.clone(),
                    sents[i].clone(),
                    fx.english[best(vi, &english)].clone(),
                ));
            }
        }
        per_lang.push((h, v.len(), r / v.len() as f64));
        hits += h;
        rr += r;
    }
    let n = fx.pairs();
    Ok(Retrieval {
        per_lang,
        all: (hits, n, rr / n as f64),
        own_cos: own / n as f64,
        other_cos: other / n_other.max(1) as f64,
        misses,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Wall-clock ms per sentence for embedding every sentence in batches of `b` (passage role,
/// as the daemon embeds published text).
fn ms_per_sentence(enc: &TextEncoder, texts: &[&str], b: usize) -> Result<f64> {
    let t0 = Instant::now();
    for chunk in texts.chunks(b) {
        for r in enc.embed(chunk) {
            r?;
        }
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3 / texts.len() as f64)
}

fn vm_hwm_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .context("no VmHWM in /proc/self/status")
}

/// Child mode: load one model, embed every sentence at batch 16, print load ms, peak RSS and
/// the RSS afterwards with the heap trimmed as the daemon trims it after loading.
fn child(manifest: &Manifest, key: &str, fx: &Fixture) -> Result<()> {
    let enc = TextEncoder::load(manifest, key, None, None, BATCHES[1])?;
    ms_per_sentence(&enc, &fx.all_sentences(), BATCHES[1])?;
    edgefuse::cpu::trim_heap();
    let steady = edgefuse::stats::rss_bytes() as f64 / (1024.0 * 1024.0);
    println!("{} {} {steady}", enc.model.load_ms, vm_hwm_mb()?);
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
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

fn main() -> Result<()> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1);
    let mut models = repo.join("models");
    let mut write: Option<PathBuf> = None;
    let mut reps = 5usize;
    let mut child_key: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--models" => models = args.next().context("--models DIR")?.into(),
            "--write" => write = Some(args.next().context("--write FILE")?.into()),
            "--reps" => reps = args.next().context("--reps N")?.parse()?,
            "--child" => child_key = Some(args.next().context("--child KEY")?),
            other => bail!("unknown argument {other}"),
        }
    }
    let manifest = Manifest::load(&models.join("manifest.toml"))?;
    let fx = read_fixture(&repo.join(FIXTURE))?;
    if let Some(key) = child_key {
        return child(&manifest, &key, &fx);
    }
    ensure!(
        fx.langs.len() >= 5 && fx.pairs() >= 100,
        "{FIXTURE}: {} languages and {} pairs; the report wants at least 5 and 100",
        fx.langs.len(),
        fx.pairs()
    );
    let load_before = loadavg();
    eprintln!("[multilingual] loading {MINILM} and {E5}");
    let minilm = TextEncoder::load(&manifest, MINILM, None, None, BATCHES[1])?;
    let e5 = TextEncoder::load(&manifest, E5, None, None, BATCHES[1])?;
    let enc_of = |key: &str| if key == E5 { &e5 } else { &minilm };

    // Cross-lingual retrieval.
    let settings = [
        Setting {
            label: "MiniLM (`text`, baseline)",
            key: MINILM,
            translation_role: TextRole::Passage,
            english_role: TextRole::Passage,
        },
        Setting {
            label: "e5, passage → passage (the daemon's text-to-text)",
            key: E5,
            translation_role: TextRole::Passage,
            english_role: TextRole::Passage,
        },
        Setting {
            label: "e5, query → query (e5's advice for bitext)",
            key: E5,
            translation_role: TextRole::Query,
            english_role: TextRole::Query,
        },
        Setting {
            label: "e5, query → passage (a search in another language)",
            key: E5,
            translation_role: TextRole::Query,
            english_role: TextRole::Passage,
        },
    ];
    eprintln!("[multilingual] retrieval");
    let results: Vec<Retrieval> = settings
        .iter()
        .map(|s| retrieval(enc_of(s.key), s, &fx))
        .collect::<Result<_>>()?;

    // English agreement.
    let en: Vec<&str> = fx.english.iter().map(String::as_str).collect();
    let m_en = embed(&minilm, &en, TextRole::Passage)?;
    let agree = |v: &[Vec<f32>]| -> (f64, usize) {
        let rho = spearman(&pairwise_cosines(&m_en), &pairwise_cosines(v));
        let nn = |set: &[Vec<f32>], i: usize| {
            (0..set.len())
                .filter(|&j| j != i)
                .max_by(|&a, &b| cosine(&set[i], &set[a]).total_cmp(&cosine(&set[i], &set[b])))
        };
        let same = (0..v.len()).filter(|&i| nn(&m_en, i) == nn(v, i)).count();
        (rho, same)
    };
    let e_pass = agree(&embed(&e5, &en, TextRole::Passage)?);
    let e_query = agree(&embed(&e5, &en, TextRole::Query)?);

    // Speed, interleaved.
    eprintln!("[multilingual] timing, {reps} repetitions");
    let all = fx.all_sentences();
    let encs = [&minilm, &e5];
    for e in encs {
        for b in BATCHES {
            ms_per_sentence(e, &all, b)?; // warm-up
        }
    }
    let mut times = vec![vec![Vec::new(); BATCHES.len()]; encs.len()];
    for _ in 0..reps {
        for (i, e) in encs.iter().enumerate() {
            for (j, &b) in BATCHES.iter().enumerate() {
                times[i][j].push(ms_per_sentence(e, &all, b)?);
            }
        }
    }
    let ms: Vec<Vec<f64>> = times
        .iter_mut()
        .map(|t| t.iter_mut().map(|v| median(v)).collect())
        .collect();

    // RSS and load time, one fresh process per model.
    eprintln!("[multilingual] peak RSS");
    let exe = std::env::current_exe()?;
    let mut mem = Vec::new();
    for key in [MINILM, E5] {
        let out = Command::new(&exe)
            .arg("--models")
            .arg(&models)
            .args(["--child", key])
            .output()?;
        if !out.status.success() {
            bail!("child for {key}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(str::parse::<f64>);
        let load_ms = it.next().context("load ms")??;
        let rss = it.next().context("rss")??;
        let steady = it.next().context("steady rss")??;
        let mb =
            std::fs::metadata(manifest.path_of(&manifest.model(key)?.file))?.len() as f64 / 1e6;
        mem.push((load_ms, rss, mb, steady));
    }
    let load_after = loadavg();

    // The report.
    let mut md = format!(
        "{BEGIN}\n\nMeasured by `models/report_multilingual` on {} ({} logical CPUs, `{}`), one \
         tract thread, debug build with optimised dependencies; load average {load_before} \
         before and {load_after} after the run (the machine was shared: compare the ratios, \
         not the absolute times). Fixture: `{FIXTURE}`, {} English sentences and their \
         translations into {} languages ({} pairs).\n",
        std::env::consts::ARCH,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        fx.english.len(),
        fx.langs.len(),
        fx.pairs(),
    );
    md.push_str(&format!(
        "\n**Cross-lingual retrieval**: for every translation, is its English sentence the \
         nearest of all {} English sentences? Translations whose English sentence \
         ranks first (recall@1 as a count) · mean reciprocal rank.\n\n| model, roles |",
        fx.english.len()
    ));
    for (lang, _) in &fx.langs {
        md.push_str(&format!(" {lang} |"));
    }
    md.push_str(" all |\n|---|");
    md.push_str(&"---|".repeat(fx.langs.len() + 1));
    md.push('\n');
    for (s, r) in settings.iter().zip(&results) {
        md.push_str(&format!("| {} |", s.label));
        for (h, n, mrr) in r.per_lang.iter().chain(std::iter::once(&r.all)) {
            md.push_str(&format!(" {h}/{n} · {mrr:.3} |"));
        }
        md.push('\n');
    }
    md.push_str(
        "\nThe models' cosine scales differ (mean cosine over all pairs; a threshold tuned for \
         one model does not carry over to the other):\n\n\
         | model, roles | translation ↔ its English | translation ↔ another English sentence |\n\
         |---|---|---|\n",
    );
    for (s, r) in settings.iter().zip(&results) {
        md.push_str(&format!(
            "| {} | {:.3} | {:.3} |\n",
            s.label, r.own_cos, r.other_cos
        ));
    }
    md.push_str(&format!(
        "\n**English agreement with MiniLM** on the {} English sentences ({} pairs): Spearman \
         correlation of the pairwise cosines, and the sentences whose nearest neighbour is the \
         same for both models.\n\n| e5 role | Spearman vs MiniLM | same nearest neighbour |\n\
         |---|---|---|\n| passage | {:.3} | {}/{} |\n| query | {:.3} | {}/{} |\n",
        en.len(),
        en.len() * (en.len() - 1) / 2,
        e_pass.0,
        e_pass.1,
        en.len(),
        e_query.0,
        e_query.1,
        en.len(),
    ));
    md.push_str(&format!(
        "\n**Cost**: wall-clock per sentence (tokenizer, tract, pooling) over all {} sentences, \
         median of {reps} interleaved repetitions; peak RSS of a fresh process that loads the \
         model and embeds every sentence at batch {}.\n\n\
         | model | file MB | load ms | ms/sentence b=1 | ms/sentence b=16 | peak RSS MB | RSS after trim MB |\n\
         |---|---|---|---|---|---|---|\n",
        all.len(),
        BATCHES[1],
    ));
    for (i, key) in [MINILM, E5].iter().enumerate() {
        md.push_str(&format!(
            "| `{key}` | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
            mem[i].2, mem[i].0, ms[i][0], ms[i][1], mem[i].1, mem[i].3
        ));
    }
    md.push_str(&format!(
        "| ratio e5 / MiniLM | {:.1}× | {:.1}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
        mem[1].2 / mem[0].2,
        mem[1].0 / mem[0].0,
        ms[1][0] / ms[0][0],
        ms[1][1] / ms[0][1],
        mem[1].1 / mem[0].1,
        mem[1].3 / mem[0].3,
    ));
    md.push_str(
        "\nThe RSS after trim is measured after `malloc_trim`, which the daemon calls once after \
         loading its models. Peak RSS includes the parse and optimisation buffers of loading.\n",
    );
    // Misses of the daemon's setting (e5 passage → passage), then of the other e5 settings.
    for (s, r) in settings.iter().zip(&results).skip(1) {
        if r.misses.is_empty() {
            md.push_str(&format!("\n{}: no misses.\n", s.label));
            continue;
        }
        md.push_str(&format!("\n{}, misses ({}):", s.label, r.misses.len()));
        for (k, (lang, t, got)) in r.misses.iter().enumerate() {
            md.push_str(&format!(
                "{} {lang} “{t}” → “{got}”",
                if k == 0 { "" } else { ";" }
            ));
        }
        md.push_str(".\n");
    }
    md.push_str(&format!("\n{END}\n"));
    match write {
        Some(path) => {
            let old = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
            let (Some(a), Some(b)) = (old.find(BEGIN), old.find(END)) else {
                bail!(
                    "{}: the markers {BEGIN} … {END} are missing",
                    path.display()
                );
            };
            ensure!(b > a, "{}: the end marker comes first", path.display());
            let new = format!("{}{}{}", &old[..a], md.trim_end(), &old[b + END.len()..]);
            std::fs::write(&path, new)?;
            eprintln!("[multilingual] wrote {}", path.display());
        }
        None => print!("{md}"),
    }
    Ok(())
}
