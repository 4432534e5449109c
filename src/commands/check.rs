//! `edgefuse check`: the config in force, each model as loaded, the CPU and tract's kernels.

use std::process::ExitCode;

use serde::Serialize;

use super::load_config;
use crate::cli::{CheckArgs, Cli};
use crate::cpu;
use crate::encoders::{LoadedModel, Modality};
use crate::manifest::Manifest;

#[derive(Serialize)]
struct Report {
    version: &'static str,
    config: String,
    models_dir: String,
    cpu: CpuReport,
    models: Vec<ModelReport>,
}

#[derive(Serialize)]
struct CpuReport {
    arch: &'static str,
    simd: Vec<&'static str>,
    tract_isa: Vec<&'static str>,
}

#[derive(Serialize)]
struct ModelReport {
    modality: String,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantization: Option<String>,
    /// Manifest key of the original this variant was derived from (absent for originals).
    #[serde(skip_serializing_if = "Option::is_none")]
    variant_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    optimize: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    license: Option<String>,
    inputs: Vec<String>,
    input_facts: Vec<String>,
    kernels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_ms: Option<f64>,
    /// The compiled form the daemon starts from, when `models.compiled_cache` is on and the
    /// daemon has written it (`check` itself always loads the ONNX file, verifying it).
    #[serde(skip_serializing_if = "Option::is_none")]
    compiled: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl ModelReport {
    fn loaded(modality: &str, m: &LoadedModel) -> Self {
        ModelReport {
            modality: modality.to_owned(),
            key: m.key.clone(),
            name: Some(m.spec.name.clone()),
            path: Some(m.path.display().to_string()),
            sha256: Some(m.spec.sha256.clone()),
            format: Some(m.spec.format.clone()),
            quantization: Some(m.spec.quantization.clone()),
            variant_of: m.spec.variant_of.clone(),
            optimize: m.spec.optimize_method().map(str::to_owned),
            dim: Some(m.spec.dim),
            license: Some(m.spec.license.clone()),
            inputs: m.spec.inputs.iter().map(|t| t.describe()).collect(),
            input_facts: m.input_facts.clone(),
            kernels: m.kernels.clone(),
            load_ms: Some(m.load_ms),
            compiled: None,
            error: None,
        }
    }

    fn failed(modality: &str, key: &str, error: String) -> Self {
        ModelReport {
            modality: modality.to_owned(),
            key: key.to_owned(),
            name: None,
            path: None,
            sha256: None,
            format: None,
            quantization: None,
            variant_of: None,
            optimize: None,
            dim: None,
            license: None,
            inputs: vec![],
            input_facts: vec![],
            kernels: vec![],
            load_ms: None,
            compiled: None,
            error: Some(error),
        }
    }
}

pub fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(cli)?;
    let models_dir = config.models_dir(cli.models.as_deref());
    let manifest = Manifest::load(&models_dir.join("manifest.toml"))?;
    let e = &config.encoders;
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for (m, enabled, key) in [
        (Modality::Text, e.text.enabled, e.text.model.as_str()),
        (Modality::Vision, e.vision.enabled, e.vision.model.as_str()),
        (Modality::Audio, e.audio.enabled, e.audio.model.as_str()),
    ] {
        if enabled {
            wanted.push((m.as_str(), key));
        }
    }
    let cache = config.model_cache();
    let mut models = Vec::new();
    for (modality, key) in wanted {
        models.push(match LoadedModel::load(&manifest, key) {
            Ok(m) => ModelReport {
                compiled: cache.as_ref().map(|c| {
                    let p = c.path_for(&m.spec);
                    let state = if p.is_file() {
                        "present"
                    } else {
                        "not yet written"
                    };
                    format!("{} ({state})", p.display())
                }),
                ..ModelReport::loaded(modality, &m)
            },
            Err(err) => ModelReport::failed(modality, key, err.to_string()),
        });
    }
    let report = Report {
        version: env!("CARGO_PKG_VERSION"),
        config: cli.config.as_ref().map_or_else(
            || "built-in default".to_owned(),
            |p| p.display().to_string(),
        ),
        models_dir: models_dir.display().to_string(),
        cpu: CpuReport {
            arch: cpu::arch(),
            simd: cpu::simd_features(),
            tract_isa: cpu::tract_isa(),
        },
        models,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    let failed = report.models.iter().filter(|m| m.error.is_some()).count();
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(r: &Report) {
    println!("edgefuse {}", r.version);
    println!("config:     {}", r.config);
    println!("models dir: {}", r.models_dir);
    println!("cpu:        {}", r.cpu.arch);
    println!("  simd:      {}", join_or_none(&r.cpu.simd));
    println!("  tract isa: {}", join_or_none(&r.cpu.tract_isa));
    for m in &r.models {
        println!("model {} ({}):", m.modality, m.key);
        if let Some(err) = &m.error {
            println!("  error: {err}");
            continue;
        }
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        println!("  name:         {}", opt(&m.name));
        println!("  path:         {}", opt(&m.path));
        println!("  sha256:       {} (verified)", opt(&m.sha256));
        println!(
            "  format:       {}, quantization {}, dim {}, licence {}",
            opt(&m.format),
            opt(&m.quantization),
            m.dim.unwrap_or(0),
            opt(&m.license)
        );
        match (&m.variant_of, &m.optimize) {
            (Some(base), method) => println!(
                "  variant:      {} of `{base}` ({})",
                m.key,
                method.as_deref().unwrap_or("?")
            ),
            (None, _) => println!("  variant:      {} (original)", m.key),
        }
        println!("  inputs:       {}", m.inputs.join("; "));
        println!("  tract facts:  {}", m.input_facts.join("; "));
        println!("  mm kernels:   {}", join_or_none(&m.kernels));
        println!("  load:         {:.0} ms", m.load_ms.unwrap_or(0.0));
        println!(
            "  compiled:     {}",
            m.compiled
                .as_deref()
                .unwrap_or("off (models.compiled_cache = false)")
        );
    }
}

fn join_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
