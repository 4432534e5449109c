//! The `edgefuse` binary as a user runs it: JSON lines out, one clear error line, exit codes.

use std::process::Output;

use crate::util::{edgefuse_cmd, manifest, models_dir, repo, run_edgefuse, stderr};

fn stdout_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn embed_text_prints_one_unit_vector_per_input() {
    let o = run_edgefuse(&[
        "embed",
        "text",
        "A man plays guitar.",
        "Someone is playing a guitar.",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 2);
    for (line, input) in lines
        .iter()
        .zip(["A man plays guitar.", "Someone is playing a guitar."])
    {
        assert_eq!(line["modality"], "text");
        assert_eq!(line["input"], input);
        assert_eq!(line["dim"], 384);
        assert_eq!(line["model"]["name"], "all-MiniLM-L6-v2");
        // The payload names the quantization of the model the default config selects.
        assert_eq!(
            line["model"]["quantization"].as_str(),
            Some(default_text_quantization().as_str())
        );
        let v: Vec<f64> = serde_json::from_value(line["vector"].clone()).unwrap();
        assert_eq!(v.len(), 384);
        let n: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "norm {n}");
    }
}

#[test]
fn embed_image_and_audio_work_from_the_repository_root() {
    let o = run_edgefuse(&["embed", "image", "tests/fixtures/images/coffee.jpg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout_lines(&o)[0]["dim"], 384);
    let o = run_edgefuse(&[
        "embed",
        "audio",
        "--blocks",
        "tests/fixtures/audio/pink_noise.wav",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = &stdout_lines(&o)[0];
    assert_eq!(line["dim"], 512);
    assert_eq!(line["blocks"].as_array().map(Vec::len), Some(2));
}

#[test]
fn bad_inputs_fail_with_one_clear_line_each_and_a_nonzero_exit() {
    let cases: [(&[&str], &str); 5] = [
        (&["embed", "text", ""], "empty text"),
        (
            &["embed", "image", "tests/fixtures/images/not_an_image.jpg"],
            "unrecognised image format (JPEG, PNG and WebP are supported)",
        ),
        (
            &["embed", "image", "tests/fixtures/images/truncated.jpg"],
            "corrupt image",
        ),
        (
            &["embed", "audio", "tests/fixtures/audio/not_a_wav.wav"],
            "not a WAV file",
        ),
        (
            &["embed", "audio", "tests/fixtures/audio/truncated.wav"],
            "truncated WAV",
        ),
    ];
    for (args, want) in cases {
        let o = run_edgefuse(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn good_inputs_are_still_printed_when_one_fails() {
    let o = run_edgefuse(&[
        "embed",
        "image",
        "tests/fixtures/images/coffee.jpg",
        "tests/fixtures/images/no_such_file.jpg",
    ]);
    assert!(!o.status.success());
    assert_eq!(stdout_lines(&o).len(), 1);
    assert!(stderr(&o).contains("no_such_file.jpg"), "{}", stderr(&o));
}

#[test]
fn a_missing_model_says_to_run_the_fetch_step() {
    let empty = models_with_manifest_only();
    let o = embed_hello_from(empty.path());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("missing") && err.contains("models/fetch"),
        "{err}"
    );
}

#[test]
fn a_tampered_model_is_refused_with_a_checksum_error() {
    let dir = models_with_manifest_only();
    let src = models_dir();
    std::fs::create_dir_all(dir.path().join("text")).unwrap();
    // The file of the text model the default config selects (an original or a variant).
    let file = default_text_spec().file;
    let mut bytes = std::fs::read(src.join(&file)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(dir.path().join(&file), bytes).unwrap();
    std::fs::copy(
        src.join("text/tokenizer.json"),
        dir.path().join("text/tokenizer.json"),
    )
    .unwrap();
    let o = embed_hello_from(dir.path());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("sha256") && err.contains("tampered"), "{err}");
}

/// A models directory holding the repository's manifest and no model.
fn models_with_manifest_only() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("models/manifest.toml"),
        dir.path().join("manifest.toml"),
    )
    .unwrap();
    dir
}

/// `edgefuse embed text hello` on the models in `models`.
fn embed_hello_from(models: &std::path::Path) -> Output {
    edgefuse_cmd()
        .args(["embed", "text", "hello"])
        .env("EDGEFUSE_MODELS", models)
        .output()
        .unwrap()
}

#[test]
fn check_names_models_kernels_and_cpu_features() {
    let o = run_edgefuse(&["check", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["cpu"]["arch"], std::env::consts::ARCH);
    assert!(!r["cpu"]["tract_isa"].as_array().unwrap().is_empty());
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    for m in models {
        assert!(m["error"].is_null(), "{m}");
        assert_eq!(m["sha256"].as_str().unwrap().len(), 64);
        let kernels = m["kernels"].as_array().unwrap();
        assert!(!kernels.is_empty(), "{m}");
        // Pi and Jetson cores have no SVE; on an SVE machine (Graviton 3, qemu's `max`) tract
        // rightly picks its SVE kernels instead.
        #[cfg(target_arch = "aarch64")]
        if !r["cpu"]["tract_isa"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "sve" || f == "sve2")
        {
            for k in kernels {
                let k = k.as_str().unwrap();
                assert!(
                    k.starts_with("arm64simd_") || k.starts_with("arm64fp16_"),
                    "not a NEON kernel: {k}"
                );
            }
        }
    }
    let text = run_edgefuse(&["check"]);
    assert!(text.status.success());
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("mm kernels:") && out.contains("(verified)"),
        "{out}"
    );
}

#[test]
fn an_invalid_config_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[encoders.text]\nmax_length = 0\n[encoders.vision]\nmax_batch = 0\n",
    )
    .unwrap();
    let o = run_edgefuse(&["--config", p.to_str().unwrap(), "check"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("encoders.text.max_length") && err.contains("encoders.vision.max_batch"),
        "{err}"
    );
}

fn default_text_spec() -> edgefuse::manifest::ModelSpec {
    let key = edgefuse::config::Config::builtin().encoders.text.model;
    manifest().model(&key).unwrap().clone()
}

fn default_text_quantization() -> String {
    default_text_spec().quantization
}

// ---------------------------------------------------------------- describe

/// A config whose state dir (class-name embedding cache) is shared by the describe tests, so
/// the class names are embedded once per test run.
fn describe_config() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-describe");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("edgefuse.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n",
            dir.join("state").display().to_string()
        ),
    )
    .unwrap();
    cfg
}

fn describe(args: &[&str]) -> Output {
    let cfg = describe_config();
    let mut all = vec!["--config", cfg.to_str().unwrap(), "describe"];
    all.extend_from_slice(args);
    run_edgefuse(&all)
}

#[test]
fn describe_says_what_a_photo_and_a_sentence_show_in_words() {
    let o = describe(&[
        "--labels",
        "dog, cat ,coffee,rocket",
        "--text",
        "a cup of espresso",
        "tests/fixtures/images/chelsea.jpg",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 2);
    let text = &lines[0];
    assert_eq!(text["input"], "a cup of espresso");
    assert_eq!(text["modality"], "text");
    assert!(text.get("classes").is_none());
    assert_eq!(text["zero_shot"][0]["label"], "coffee");
    let img = &lines[1];
    assert_eq!(img["input"], "tests/fixtures/images/chelsea.jpg");
    assert_eq!(img["modality"], "vision");
    let classes = img["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 5, "encoders.classifier.top_k defaults to 5");
    let probs: Vec<f64> = classes
        .iter()
        .map(|c| c["probability"].as_f64().unwrap())
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
    assert!(classes[0]["name"].as_str().unwrap().contains("cat"));
    // Labels trimmed, all four scored, best first, with the classes that carried the score.
    let zs = img["zero_shot"].as_array().unwrap();
    let labels: Vec<&str> = zs.iter().map(|z| z["label"].as_str().unwrap()).collect();
    assert_eq!(labels.len(), 4);
    assert_eq!(labels[0], "cat", "{zs:?}");
    let scores: Vec<f64> = zs.iter().map(|z| z["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(!zs[0]["reason"].as_array().unwrap().is_empty());
    assert_eq!(img["space"], "conse/all-MiniLM-L6-v2");
    assert!(img.get("semantic").is_none());
}

#[test]
fn describe_prints_the_shared_space_vector_on_request() {
    let o = describe(&["--vector", "--text", "hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = stdout_lines(&o);
    let v: Vec<f64> = lines[0]["semantic"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 384);
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    assert_eq!(lines[0]["zero_shot"].as_array().unwrap().len(), 0);
}

#[test]
fn describe_transcribes_a_wav_and_scores_the_labels_on_what_was_said() {
    let o = describe(&[
        "--labels",
        "weather,cooking,vehicle",
        "tests/fixtures/speech/kettle.wav",
        "tests/fixtures/speech/silence_3s.wav",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let k = &lines[0];
    assert_eq!(k["input"], "tests/fixtures/speech/kettle.wav");
    assert_eq!(k["modality"], "audio");
    let said: String = k["transcript"]["text"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect();
    assert_eq!(
        said.split_whitespace().collect::<Vec<_>>().join(" "),
        "the kettle is boiling in the kitchen"
    );
    assert!(k["transcript"]["segments"][0]["end_s"].as_f64().unwrap() > 1.0);
    assert!(k.get("classes").is_none());
    let zs = k["zero_shot"].as_array().unwrap();
    assert_eq!(zs.len(), 3, "{k}");
    assert_eq!(zs[0]["label"], "cooking", "{k}");
    assert!(zs[0]["score"].as_f64() > zs[1]["score"].as_f64(), "{k}");
    // Silence: an empty transcript and no labels (no text vector to score them on).
    let s = &lines[1];
    assert_eq!(s["transcript"]["text"], "");
    assert!(s["transcript"]["segments"].as_array().unwrap().is_empty());
    assert!(s["zero_shot"].as_array().unwrap().is_empty(), "{s}");
}

#[test]
fn describe_refuses_bad_audio_and_bad_images_per_input_and_exits_nonzero() {
    let o = describe(&[
        "--labels",
        "cat",
        "tests/fixtures/audio/not_a_wav.wav",
        "tests/fixtures/images/not_an_image.jpg",
        "tests/fixtures/images/coffee.jpg",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("not_a_wav.wav") && err.contains("not a WAV file"),
        "{err}"
    );
    assert!(
        err.contains("not_an_image.jpg") && err.contains("unrecognised image format"),
        "{err}"
    );
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 1, "the good image is still described");
    assert_eq!(lines[0]["input"], "tests/fixtures/images/coffee.jpg");
}

#[test]
fn describe_rejects_empty_or_huge_labels_and_no_input_with_one_line() {
    for (args, want) in [
        (
            vec!["--labels", "cat,,dog", "--text", "x"],
            "a label is empty",
        ),
        (vec!["--text", "x", "--labels"], "a value is required"),
        (vec![], "nothing to describe"),
    ] {
        let o = describe(&args);
        assert!(!o.status.success(), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(o.stdout.is_empty());
    }
    let long = "x".repeat(300);
    let o = describe(&["--labels", &long, "--text", "x"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("longer than 256 bytes"),
        "{}",
        stderr(&o)
    );
}
