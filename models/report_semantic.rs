//! The shared-space quality table of docs/models.md: zero-shot top-1 (image → word and
//! word → image) on the 40 labelled photos of tests/fixtures/photos, plain ConSE beside the
//! variants edgefuse can use, classifier label accuracy, and the latency and RSS the classifier
//! adds; and photo → word with the labels translated into six more languages
//! (`tests/fixtures/photos/words.tsv`), the configured English text encoder beside
//! `text-multilingual`, each in its own ConSE space. Run through `models/report_semantic`
//! (`--write docs/models.md` replaces each section between its markers; without it the tables
//! are printed; `--multilingual` computes only the second section).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgefuse::config::Config;
use edgefuse::encoders::{ClassifierEncoder, TextEncoder, TextRole};
use edgefuse::manifest::Manifest;
use edgefuse::semantic::{cache, LabelText, SemanticConfig, SemanticSpace, SemanticVector};

const BEGIN: &str = "<!-- semantic-report:begin -->";
const END: &str = "<!-- semantic-report:end -->";
const ML_BEGIN: &str = "<!-- semantic-multilingual:begin -->";
const ML_END: &str = "<!-- semantic-multilingual:end -->";
/// The photos' labels translated (English first), one column per language.
const WORDS: &str = "tests/fixtures/photos/words.tsv";
/// The multilingual text encoder measured against the configured (English) one.
const MULTILINGUAL: &str = "text-multilingual";

struct Photo {
    file: String,
    label: String,
    imagenet: Vec<String>,
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let write = args
        .iter()
        .position(|a| a == "--write")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    // Only the multilingual section (the English table is left as it is in the doc).
    let multilingual_only = args.iter().any(|a| a == "--multilingual");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = std::env::var_os("EDGEFUSE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("models"));
    let state = std::env::temp_dir().join("edgefuse-semantic-report");
    let config = Config::builtin();
    let manifest = Manifest::load(&models.join("manifest.toml"))?;

    let photos = read_photos(&repo.join("tests/fixtures/photos"))?;
    let bytes: Vec<Vec<u8>> = photos
        .iter()
        .map(|p| std::fs::read(repo.join("tests/fixtures/photos").join(&p.file)))
        .collect::<Result<_, _>>()?;

    let e = &config.encoders;
    let text = TextEncoder::load(
        &manifest,
        &e.text.model,
        None,
        e.text.max_length,
        e.text.max_batch,
    )?;
    let rss_before = rss_mib();
    let t0 = Instant::now();
    let classifier = ClassifierEncoder::load(
        &manifest,
        &e.classifier.model,
        None,
        5,
        1,
        e.classifier.max_pixels,
    )?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_loaded = rss_mib();
    // One image at a time, as the daemon runs a single input; first call warms up.
    let _ = classifier.classify(&[&bytes[0]]);
    let mut pre = Vec::new();
    let mut infer = Vec::new();
    let mut probs = Vec::new();
    let mut top1 = 0;
    let mut top5 = 0;
    let mut in_imagenet = 0;
    let mut class_lines = Vec::new();
    for (p, b) in photos.iter().zip(&bytes) {
        let c = classifier
            .classify(&[b])
            .remove(0)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.file))?;
        pre.push(c.timings.preprocess_ms);
        infer.push(c.timings.inference_ms);
        if !p.imagenet.is_empty() {
            in_imagenet += 1;
            let ok = |s: &&edgefuse::encoders::classifier::ClassScore| p.imagenet.contains(&s.name);
            top1 += usize::from(c.top.iter().take(1).any(|s| ok(&s)));
            top5 += usize::from(c.top.iter().take(5).any(|s| ok(&s)));
        }
        class_lines.push(format!(
            "| `{}` | {} | {} |",
            p.file,
            p.label,
            c.top
                .iter()
                .take(3)
                .map(|s| format!("{} {:.2}", s.name, s.probability))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        probs.push(c.probabilities);
    }
    let rss_after = rss_mib();

    let mut sections = Vec::new();
    if !multilingual_only {
        let md = english_section(
            &photos,
            &probs,
            &state,
            &text,
            &classifier,
            Costs {
                in_imagenet,
                top1,
                top5,
                pre,
                infer,
                load_ms,
                rss_loaded: rss_loaded - rss_before,
                rss_after: rss_after - rss_before,
                class_lines,
            },
            &e.text.model,
        )?;
        sections.push((BEGIN, END, md));
    }
    let md = multilingual_section(
        &photos,
        &probs,
        &state,
        &text,
        &classifier,
        &manifest,
        &config,
        &repo.join(WORDS),
    )?;
    sections.push((ML_BEGIN, ML_END, md));

    match write {
        Some(path) => {
            let mut doc = std::fs::read_to_string(&path)?;
            for (begin, end, md) in &sections {
                let (Some(a), Some(b)) = (doc.find(begin), doc.find(end)) else {
                    anyhow::bail!("{} has no {begin} … {end} markers", path.display());
                };
                anyhow::ensure!(a < b, "{}: {end} comes before {begin}", path.display());
                doc = format!("{}{begin}\n{md}{}", &doc[..a], &doc[b..]);
            }
            std::fs::write(&path, doc)?;
            eprintln!("wrote {}", path.display());
        }
        None => {
            for (_, _, md) in &sections {
                println!("{md}");
            }
        }
    }
    Ok(())
}

/// Classifier measurements made once in `main` and reported in the English section.
struct Costs {
    in_imagenet: usize,
    top1: usize,
    top5: usize,
    pre: Vec<f64>,
    infer: Vec<f64>,
    load_ms: f64,
    rss_loaded: f64,
    rss_after: f64,
    class_lines: Vec<String>,
}

/// The main table: plain ConSE and its variants, English words, the configured text encoder.
#[allow(clippy::too_many_arguments)]
fn english_section(
    photos: &[Photo],
    probs: &[Vec<f32>],
    state: &Path,
    text: &TextEncoder,
    classifier: &ClassifierEncoder,
    costs: Costs,
    text_key: &str,
) -> anyhow::Result<String> {
    let Costs {
        in_imagenet,
        top1,
        top5,
        pre,
        infer,
        load_ms,
        rss_loaded,
        rss_after,
        class_lines,
    } = costs;
    let words: Vec<String> = {
        let mut w: Vec<String> = photos.iter().map(|p| p.label.clone()).collect();
        w.sort();
        w.dedup();
        w
    };

    let base = SemanticConfig::default();
    let plain = SemanticConfig::plain_conse();
    let with = |f: &dyn Fn(&mut SemanticConfig)| {
        let mut c = plain.clone();
        f(&mut c);
        c
    };
    let methods: Vec<(String, SemanticConfig)> = vec![
        ("plain ConSE (clean names, T = 10)".into(), plain.clone()),
        (
            "plain + prompt \"a photo of a {}\"".into(),
            with(&|c| c.template = "a photo of a {}".into()),
        ),
        ("T = 1 (top class only)".into(), with(&|c| c.top_t = 1)),
        ("T = 5".into(), with(&|c| c.top_t = 5)),
        ("T = 20".into(), with(&|c| c.top_t = 20)),
        ("temperature 0.5".into(), with(&|c| c.temperature = 0.5)),
        ("temperature 2".into(), with(&|c| c.temperature = 2.0)),
        (
            "synonyms".into(),
            with(&|c| c.label_text = LabelText::Synonyms),
        ),
        (
            "descriptions".into(),
            with(&|c| c.label_text = LabelText::Descriptions),
        ),
        ("centring 0.5".into(), with(&|c| c.centre = 0.5)),
        ("centring 1".into(), with(&|c| c.centre = 1.0)),
        (
            "synonyms + centring 1".into(),
            with(&|c| {
                c.label_text = LabelText::Synonyms;
                c.centre = 1.0
            }),
        ),
        (
            "synonyms + centring 1 + prompt".into(),
            with(&|c| {
                c.label_text = LabelText::Synonyms;
                c.centre = 1.0;
                c.template = "a photo of a {}".into()
            }),
        ),
        (
            "descriptions + centring 1".into(),
            with(&|c| {
                c.label_text = LabelText::Descriptions;
                c.centre = 1.0
            }),
        ),
        ("**edgefuse default** (`[semantic]`)".into(), base.clone()),
    ];

    let mut rows = Vec::new();
    let mut failures = String::new();
    for (name, cfg) in &methods {
        let t = Instant::now();
        let space = SemanticSpace::load_or_build(Some(state), text, classifier, cfg)?;
        let build_s = t.elapsed().as_secs_f64();
        let prompts: Vec<String> = words.iter().map(|w| cfg.prompt(w)).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let word_embs: Vec<(String, Vec<f32>)> = words
            .iter()
            .cloned()
            .zip(text.embed(&refs).into_iter().map(|r| r.map(|e| e.vector)))
            .map(|(w, r)| r.map(|v| (w, v)))
            .collect::<Result<_, _>>()?;
        let images: Vec<SemanticVector> = probs.iter().map(|p| space.image_vector(p)).collect();
        // image → word: the best of the 37 words is the photo's label.
        let mut i2w = 0;
        let mut top_words: BTreeMap<String, usize> = BTreeMap::new();
        let mut misses = Vec::new();
        for (p, v) in photos.iter().zip(&images) {
            let scores = space.zero_shot(v, &word_embs);
            let best = &scores[0].label;
            *top_words.entry(best.clone()).or_default() += 1;
            if *best == p.label {
                i2w += 1;
            } else {
                misses.push(format!("{} → {}", p.label, best));
            }
        }
        // word → image: the best-scoring photo for each word carries that label.
        let mut w2i = 0;
        for (w, emb) in &word_embs {
            let wv = space.text_vector(emb).vector;
            let best = images
                .iter()
                .enumerate()
                .map(|(i, v)| (i, dot(&v.vector, &wv)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            if best.is_some_and(|i| photos[i].label == *w) {
                w2i += 1;
            }
        }
        let (hub, hub_n) = top_words
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(w, n)| (w.clone(), *n))
            .unwrap_or_default();
        rows.push(format!(
            "| {name} | {} | {} | {}/{} ({:.0} %) | {}/{} ({:.0} %) | \"{hub}\" ×{hub_n} |",
            cfg.label_text.as_str(),
            cfg.centre,
            i2w,
            photos.len(),
            100.0 * i2w as f64 / photos.len() as f64,
            w2i,
            words.len(),
            100.0 * w2i as f64 / words.len() as f64,
        ));
        eprintln!("{name}: image→word {i2w}, word→image {w2i}, space {build_s:.1} s");
        if std::ptr::eq(cfg, &methods.last().expect("methods").1) {
            failures = misses.join("; ");
        }
    }

    let mut md = String::new();
    md.push_str(&format!(
        "Measured by `models/report_semantic` on {} photos ({} distinct labels; \
         `tests/fixtures/photos/labels.tsv` gives each photo's source and licence), text \
         encoder `{}` ({}), classifier `{}`. The words scored are the {} labels themselves.\n\n",
        photos.len(),
        words.len(),
        text_key,
        text.model.spec.name,
        classifier.image.model.spec.name,
        words.len()
    ));
    md.push_str(
        "| method | label texts | centring | image → word top-1 | word → image top-1 | most frequent top word |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(r);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nEvery row: T = 10 and temperature 1 unless it says otherwise; a prompt, when \
         used, wraps class texts and words alike. Default's misses (label → top word): {failures}.\n\n\
         Classifier alone: of the {in_imagenet} photos showing something ImageNet-1k has a class \
         for (`imagenet` column of labels.tsv), top-1 is right for {top1} ({:.0} %), top-5 for \
         {top5} ({:.0} %). The other {} photos (astronaut, coins, galaxy, moon, grass, …) \
         have no ImageNet class at all: only the shared space can name them.\n\n\
         Cost on this machine (2 shared x86-64 cores, dev profile with tract at opt-level 3, one \
         image per call, median of {}): preprocessing {:.1} ms, inference {:.1} ms; load \
         {:.0} ms; RSS +{:.0} MiB after loading the classifier, +{:.0} MiB after classifying \
         the photos (class-name embeddings, computed once and cached, add 1.5 MB).\n\n",
        100.0 * top1 as f64 / in_imagenet.max(1) as f64,
        100.0 * top5 as f64 / in_imagenet.max(1) as f64,
        photos.len() - in_imagenet,
        photos.len(),
        median(pre),
        median(infer),
        load_ms,
        rss_loaded,
        rss_after,
    ));
    md.push_str("<details><summary>Top-3 classes per photo</summary>\n\n| photo | label | top-3 ImageNet classes |\n|---|---|---|\n");
    for l in class_lines {
        md.push_str(&l);
        md.push('\n');
    }
    md.push_str("\n</details>\n");

    Ok(md)
}

/// The photos' labels in several languages: `langs[0]` is English, `words[l][k]` the k-th
/// label in language `l` (rows in file order).
struct Translations {
    langs: Vec<String>,
    words: Vec<Vec<String>>,
}

fn read_words(path: &Path) -> anyhow::Result<Translations> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let langs: Vec<String> = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no header", path.display()))?
        .split('\t')
        .map(String::from)
        .collect();
    anyhow::ensure!(
        langs.first().map(String::as_str) == Some("en") && langs.len() >= 2,
        "{}: the header must start with `en` and name another language",
        path.display()
    );
    let mut words = vec![Vec::new(); langs.len()];
    for line in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(
            cells.len() == langs.len() && cells.iter().all(|c| !c.trim().is_empty()),
            "{}: bad row {line:?}",
            path.display()
        );
        for (col, c) in words.iter_mut().zip(cells) {
            col.push(c.trim().to_owned());
        }
    }
    for (lang, col) in langs.iter().zip(&words) {
        let mut sorted = col.clone();
        sorted.sort();
        sorted.dedup();
        anyhow::ensure!(
            sorted.len() == col.len(),
            "{}: {lang} has a word twice",
            path.display()
        );
    }
    Ok(Translations { langs, words })
}

/// One measured setting: a text encoder and the role its words are embedded with.
struct Encoding<'a> {
    label: String,
    text: &'a TextEncoder,
    role: TextRole,
}

/// Photo → word top-1 with the labels in every language of `words.tsv`: the configured
/// (English) text encoder as the baseline beside `text-multilingual`, each with its own ConSE
/// space (class names embedded by that encoder, cached per model under `state`).
#[allow(clippy::too_many_arguments)]
fn multilingual_section(
    photos: &[Photo],
    probs: &[Vec<f32>],
    state: &Path,
    text: &TextEncoder,
    classifier: &ClassifierEncoder,
    manifest: &Manifest,
    config: &Config,
    words_path: &Path,
) -> anyhow::Result<String> {
    let tr = read_words(words_path)?;
    let en = &tr.words[0];
    // Each photo's label as a row of words.tsv.
    let truth: Vec<usize> = photos
        .iter()
        .map(|p| {
            en.iter()
                .position(|w| *w == p.label)
                .ok_or_else(|| anyhow::anyhow!("{WORDS} has no row for {:?}", p.label))
        })
        .collect::<anyhow::Result<_>>()?;
    let e = &config.encoders;
    let e5 = TextEncoder::load(
        manifest,
        MULTILINGUAL,
        None,
        e.text.max_length,
        e.text.max_batch,
    )?;
    let cfg = SemanticConfig::default();
    let settings = [
        Encoding {
            label: format!(
                "{} (`{}`, English only)",
                text.model.spec.name, e.text.model
            ),
            text,
            role: TextRole::Passage,
        },
        Encoding {
            label: format!(
                "{} (`{MULTILINGUAL}`), words as passages (edgefuse)",
                e5.model.spec.name
            ),
            text: &e5,
            role: TextRole::Passage,
        },
        Encoding {
            label: format!(
                "{} (`{MULTILINGUAL}`), words as queries",
                e5.model.spec.name
            ),
            text: &e5,
            role: TextRole::Query,
        },
    ];
    // hits[s][l]: photos whose best word is their label; same[s][l]: photos whose best word is
    // the translation of the best English word (same setting).
    let mut hits = vec![vec![0usize; tr.langs.len()]; settings.len()];
    let mut same = vec![vec![0usize; tr.langs.len()]; settings.len()];
    // kept[s][l]: photos right in English that stay right in language `l`.
    let mut kept = vec![vec![0usize; tr.langs.len()]; settings.len()];
    let mut misses: Vec<Vec<String>> = vec![Vec::new(); tr.langs.len()];
    let mut notes = Vec::new();
    for (si, s) in settings.iter().enumerate() {
        let cached = cache::path_for(state, s.text, classifier, &cfg).exists();
        let t = Instant::now();
        let space = SemanticSpace::load_or_build(Some(state), s.text, classifier, &cfg)?;
        if si < 2 {
            notes.push(format!(
                "`{}`: class-name embeddings {} in {:.1} s",
                s.text.model.spec.name,
                if cached {
                    "read from the cache"
                } else {
                    "computed (then cached)"
                },
                t.elapsed().as_secs_f64()
            ));
        }
        let images: Vec<SemanticVector> = probs.iter().map(|p| space.image_vector(p)).collect();
        let mut english_best = Vec::new();
        for (l, col) in tr.words.iter().enumerate() {
            let prompts: Vec<String> = col.iter().map(|w| cfg.prompt(w)).collect();
            let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
            // Index each word by its row so scores map back across languages.
            let embs: Vec<(String, Vec<f32>)> = s
                .text
                .embed_as(&refs, s.role)
                .into_iter()
                .enumerate()
                .map(|(k, r)| r.map(|e| (k.to_string(), e.vector)))
                .collect::<Result<_, _>>()?;
            for (i, v) in images.iter().enumerate() {
                let best: usize = space.zero_shot(v, &embs)[0].label.parse()?;
                if l == 0 {
                    english_best.push(best);
                }
                if best == truth[i] {
                    hits[si][l] += 1;
                } else if si == 1 {
                    misses[l].push(format!("{} → {} ({})", col[truth[i]], col[best], en[best]));
                }
                if best == english_best[i] {
                    same[si][l] += 1;
                    if best == truth[i] {
                        kept[si][l] += 1;
                    }
                }
            }
        }
        eprintln!("{}: {:?}", s.label, hits[si]);
    }

    let n = photos.len();
    let mut md = format!(
        "Measured by `models/report_semantic` on the same {n} photos: the {} labels translated \
         into {} languages (`{WORDS}`, written for edgefuse), each language scored on its \
         own (37 candidate words, the photo's label translated is right). Each text encoder \
         has its own ConSE space (the 1000 class names embedded by that encoder, English \
         names; `[semantic]` defaults: synonyms, T = 10, centring 1). {}.\n\n",
        en.len(),
        tr.langs.len() - 1,
        notes.join("; ")
    );
    let header = |md: &mut String, first: &str| {
        md.push_str(&format!("| {first} |"));
        for l in &tr.langs {
            md.push_str(&format!(" {l} |"));
        }
        md.push_str(" mean of the others |\n|---|");
        md.push_str(&"---|".repeat(tr.langs.len() + 1));
        md.push('\n');
    };
    let row = |md: &mut String, label: &str, counts: &[usize]| {
        md.push_str(&format!("| {label} |"));
        for c in counts {
            md.push_str(&format!(" {c}/{n} |"));
        }
        let others = &counts[1..];
        let mean = others.iter().sum::<usize>() as f64 / others.len().max(1) as f64;
        md.push_str(&format!(
            " {:.1}/{n} ({:.0} %) |\n",
            mean,
            100.0 * mean / n as f64
        ));
    };
    md.push_str("**Image → word top-1** (the photo's label, in that language, is the best of the 37 words):\n\n");
    header(&mut md, "text encoder, words embedded as");
    for (s, h) in settings.iter().zip(&hits) {
        row(&mut md, &s.label, h);
    }
    md.push_str(
        "\n**Same label as in English** (the best word is the translation of the best English \
         word with the same encoder, right or wrong):\n\n",
    );
    header(&mut md, "text encoder, words embedded as");
    for (s, c) in settings.iter().zip(&same) {
        row(&mut md, &s.label, c);
    }
    md.push_str(
        "\n**Right in English, right here too** (of the photos the encoder labels right with the \
         English words, how many it also labels right in this language):\n\n",
    );
    header(&mut md, "text encoder, words embedded as");
    for (s, k) in settings.iter().zip(&kept) {
        let total = k[0];
        md.push_str(&format!("| {} |", s.label));
        for c in k {
            md.push_str(&format!(" {c}/{total} |"));
        }
        let mean = k[1..].iter().sum::<usize>() as f64 / k[1..].len().max(1) as f64;
        md.push_str(&format!(
            " {mean:.1}/{total} ({:.0} %) |\n",
            100.0 * mean / total.max(1) as f64
        ));
    }
    md.push_str(&format!(
        "\n<details><summary>{} misses per language (label → best word (its English))</summary>\n\n",
        settings[1].label
    ));
    for (lang, m) in tr.langs.iter().zip(&misses) {
        md.push_str(&format!("- **{lang}** ({}): {}\n", m.len(), m.join("; ")));
    }
    md.push_str("\n</details>\n");
    Ok(md)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn read_photos(dir: &Path) -> anyhow::Result<Vec<Photo>> {
    let text = std::fs::read_to_string(dir.join("labels.tsv"))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(cols.len() >= 3, "labels.tsv: bad line {line:?}");
        out.push(Photo {
            file: cols[0].into(),
            label: cols[1].into(),
            imagenet: if cols[2] == "-" {
                Vec::new()
            } else {
                cols[2].split('|').map(String::from).collect()
            },
        });
    }
    Ok(out)
}
