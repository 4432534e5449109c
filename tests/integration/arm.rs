//! ARM-only checks: which tract-linalg kernels the models get, the f16 path, and a subset of
//! the golden comparisons that is affordable under emulation. Run natively on a device
//! (`cargo test --release --test integration arm::`) or under qemu-user by `cross/test` and `cross/ci.sh`
//! (see docs/arm.md). On other architectures this file compiles to nothing.
//!
//! The kernel a model gets depends on what tract detects: on aarch64 it reads fp16 and the core
//! type from /proc/cpuinfo and dotprod/SVE from the auxiliary vector; on armv7 it reads NEON from
//! /proc/cpuinfo. Under qemu-user /proc/cpuinfo is the host's, so cross/test stands in for the
//! device with tract's `TRACT_CPU_ISA=+fp16` and `TRACT_CPU_ARM32_NEON=true`.
//!
//! The golden tests of the `encoders` module embed every reference input, the texts in one padded
//! batch: about 26 minutes under qemu on 2 cores. The `golden_*` tests here compare a subset,
//! each text on its own, against the same onnxruntime references with the same tolerances.
#![cfg(any(target_arch = "aarch64", target_arch = "arm"))]

use edgefuse::encoders::{AudioEncoder, LoadedModel, TextEncoder, VisionEncoder};

use crate::util::golden::{encoders, find, reference, TEXT_AUDIO_MIN_COSINE, VISION_MIN_COSINE};
use crate::util::{cosine, fixture, manifest, norm};

const VISION_SUBSET: [&str; 2] = [
    "tests/fixtures/images/coffee.jpg",
    "tests/fixtures/images/astronaut.webp",
];
const AUDIO_SUBSET: [&str; 3] = [
    "tests/fixtures/audio/speech_fox.wav",
    "tests/fixtures/audio/speech_lights_48k_stereo_s24.wav",
    "tests/fixtures/audio/pink_noise.wav",
];

fn tract_has(feature: &str) -> bool {
    tract_linalg::isa::native()
        .iter()
        .any(|i| i.name() == feature)
}

// ---------------------------------------------------------------- kernels

/// The f32 models run on tract's NEON kernels (`arm64simd_*`), not a generic fallback: the Pi and
/// Jetson cores have no SVE, so on them (and under qemu's cortex-a53/a72/a76) nothing else applies.
#[cfg(target_arch = "aarch64")]
#[test]
fn kernels_of_f32_models_are_neon_on_aarch64() {
    let m = manifest();
    let sve = tract_has("sve2");
    for key in ["text", "vision", "audio"] {
        let model = LoadedModel::load(m, key).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{key}: {:?}", model.kernels);
        assert!(!model.kernels.is_empty(), "{key}: no matmul kernels");
        if sve {
            eprintln!("{key}: SVE2 present (not a Pi or Jetson): NEON assertion skipped");
            continue;
        }
        for k in &model.kernels {
            assert!(k.starts_with("arm64simd_"), "{key}: not a NEON kernel: {k}");
        }
    }
}

/// armv7: NEON kernels when tract sees NEON (a real Pi 2/3/4 in 32-bit mode, or
/// `TRACT_CPU_ARM32_NEON=true` under qemu), the VFP fallback otherwise.
#[cfg(target_arch = "arm")]
#[test]
fn kernels_of_f32_models_are_neon_on_armv7_when_neon_is_detected() {
    let m = manifest();
    let want = if tract_has("neon") {
        "armv7neon_"
    } else {
        "armvfpv2_"
    };
    for key in ["text", "vision", "audio"] {
        let model = LoadedModel::load(m, key).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{key}: {:?}", model.kernels);
        assert!(!model.kernels.is_empty(), "{key}: no matmul kernels");
        for k in &model.kernels {
            assert!(k.starts_with(want), "{key}: {k} is not {want}*");
        }
    }
}

// ---------------------------------------------------------------- f16

/// The f16 path. edgefuse ships no f16 model yet, so the fp32 all-MiniLM-L6-v2 is converted in
/// memory with tract's `f32_to_f16` transform and run on one sentence. With fp16 in tract's ISA
/// (ARMv8.2 FP16: Pi 5, Jetson Orin; or `TRACT_CPU_ISA=+fp16` under qemu's cortex-a76) every
/// matmul must be an `arm64fp16_*` kernel; without it none may be. Either way the f16 output must
/// match f32.
#[cfg(target_arch = "aarch64")]
#[test]
fn f16_text_model_uses_fp16_kernels_when_available_and_matches_f32() {
    use edgefuse::encoders::runtime::matmul_kernels;
    use tract_onnx::prelude::*;

    let m = manifest();
    let spec = m.model("text").unwrap();
    let bytes = std::fs::read(m.path_of(&spec.file)).unwrap();
    // "a man plays guitar." in the BERT uncased vocabulary, with [CLS] and [SEP].
    let ids: Vec<i64> = vec![101, 1037, 2158, 3248, 2858, 1012, 102];
    let n = ids.len();
    let typed = || -> TractResult<TypedModel> {
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut std::io::Cursor::new(&bytes))?;
        for ix in 0..spec.inputs.len() {
            model.set_input_fact(ix, i64::fact([1, n]).into())?;
        }
        model
            .with_outputs_by_name([spec.outputs[0].name.as_str()])?
            .into_typed()?
            .into_decluttered()
    };
    let run = |model: TypedModel| -> TractResult<(Vec<String>, Vec<f32>)> {
        let model = model.into_optimized()?;
        let kernels = matmul_kernels(&model);
        let inputs: TVec<TValue> = tvec![
            Tensor::from_shape(&[1, n], &ids)?.into(),
            Tensor::from_shape(&[1, n], &vec![1i64; n])?.into(),
            Tensor::from_shape(&[1, n], &vec![0i64; n])?.into(),
        ];
        let out = model.into_runnable()?.run(inputs)?.remove(0);
        let out = out.cast_to::<f32>()?;
        let hidden = out.to_plain_array_view::<f32>()?;
        // Mean over the tokens (all unmasked), as the text encoder pools.
        let dim = hidden.shape()[2];
        let mut pooled = vec![0f32; dim];
        for t in 0..n {
            for (d, p) in pooled.iter_mut().enumerate() {
                *p += hidden[[0, t, d]] / n as f32;
            }
        }
        Ok((kernels, pooled))
    };

    let (k32, v32) = run(typed().unwrap()).unwrap();
    let f16 = tract_onnx::tract_core::transform::get_transform("f32_to_f16")
        .unwrap()
        .expect("tract has the f32_to_f16 transform");
    let (k16, v16) = run(f16.transform_into(typed().unwrap()).unwrap()).unwrap();
    let c = cosine(&v32, &v16);
    eprintln!("f32 kernels: {k32:?}\nf16 kernels: {k16:?}\ncosine f16 vs f32: {c}");

    assert!(!k16.is_empty(), "the f16 model has no matmul");
    if tract_has("fp16") {
        for k in &k16 {
            assert!(k.starts_with("arm64fp16_"), "fp16 available but {k} picked");
        }
    } else {
        assert!(
            k16.iter().all(|k| !k.starts_with("arm64fp16_")),
            "no fp16 in tract's ISA but fp16 kernels picked: {k16:?}"
        );
    }
    assert!(c >= TEXT_AUDIO_MIN_COSINE, "f16 vs f32 cosine {c}");
}

// ---------------------------------------------------------------- golden subset

/// Every reference text, each embedded on its own (no padding to the longest).
#[test]
fn golden_text_each_reference_sentence() {
    let enc = encoders().get::<TextEncoder>().unwrap();
    for item in &reference().text {
        let v = enc.embed(&[&item.input]).remove(0).unwrap().vector;
        let c = cosine(&v, &item.vector);
        eprintln!("text {:.40}: cosine {c:.7}", item.input);
        assert!((norm(&v) - 1.0).abs() < 1e-4);
        assert!(c >= TEXT_AUDIO_MIN_COSINE, "{:?}: cosine {c}", item.input);
    }
}

#[test]
fn golden_vision_subset() {
    let enc = encoders().get::<VisionEncoder>().unwrap();
    for path in VISION_SUBSET {
        let item = find(&reference().vision, path);
        let v = enc.embed(&[&fixture(path)]).remove(0).unwrap().vector;
        let c = cosine(&v, &item.vector);
        eprintln!("vision {path}: cosine {c:.7}");
        assert!((norm(&v) - 1.0).abs() < 1e-4);
        assert!(c >= VISION_MIN_COSINE, "{path}: cosine {c}");
    }
}

#[test]
fn golden_audio_subset_clip_and_blocks() {
    let enc = encoders().get::<AudioEncoder>().unwrap();
    for path in AUDIO_SUBSET {
        let item = find(&reference().audio, path);
        let e = enc.embed_wavs(&[&fixture(path)]).remove(0).unwrap();
        let c = cosine(&e.vector, &item.vector);
        eprintln!("audio {path}: cosine {c:.7}");
        assert!(c >= TEXT_AUDIO_MIN_COSINE, "{path}: clip cosine {c}");
        let (got, want) = (e.blocks.unwrap(), item.blocks.as_ref().unwrap());
        assert_eq!(got.len(), want.len(), "{path}: block count");
        for (g, w) in got.iter().zip(want) {
            let c = cosine(g, w);
            assert!(c >= TEXT_AUDIO_MIN_COSINE, "{path}: block cosine {c}");
        }
    }
}
