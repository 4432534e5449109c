//! Loading one model into tract: sha256 check, concrete/symbolic input facts from the manifest,
//! optimisation, and a record of which tract-linalg kernels the optimiser picked.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

use crate::error::ModelError;
use crate::manifest::{read_verified, Dim, Manifest, ModelSpec};

/// A loaded, optimised model and what is known about it.
pub struct LoadedModel {
    pub key: String,
    pub spec: ModelSpec,
    pub path: PathBuf,
    pub plan: Arc<TypedRunnableModel>,
    /// Names of the matrix-multiplication kernels in the optimised plan.
    pub kernels: Vec<String>,
    /// Input facts as tract sees them after optimisation, e.g. `1,3,224,224,F32`.
    pub input_facts: Vec<String>,
    pub load_ms: f64,
}

impl LoadedModel {
    /// Verify and load `models.<key>` of the manifest.
    pub fn load(manifest: &Manifest, key: &str) -> Result<LoadedModel, ModelError> {
        let started = Instant::now();
        let spec = manifest.model(key)?.clone();
        let path = manifest.path_of(&spec.file);
        let bytes = read_verified(&path, &spec.sha256)?;
        let tract_err = |stage: &'static str| {
            let model = spec.name.clone();
            move |e: TractError| ModelError::Tract {
                model: model.clone(),
                stage,
                message: format!("{e:#}"),
            }
        };
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut std::io::Cursor::new(&bytes))
            .map_err(tract_err("parse the ONNX file"))?;
        for (ix, input) in spec.inputs.iter().enumerate() {
            let dt = datum_type(&input.dtype).map_err(|message| ModelError::Manifest {
                path: manifest.path_of("manifest.toml"),
                message: format!("models.{key}.inputs[{ix}]: {message}"),
            })?;
            let shape: TVec<TDim> = input
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => n.to_dim(),
                    Dim::Symbol(s) => model.symbols.sym(s).to_dim(),
                })
                .collect();
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, shape))
                .map_err(tract_err("set the input facts"))?;
        }
        let names: Vec<&str> = spec.outputs.iter().map(|o| o.name.as_str()).collect();
        let model = model
            .with_outputs_by_name(names)
            .map_err(tract_err("select the outputs"))?
            .into_optimized()
            .map_err(tract_err("optimise the model"))?;
        let kernels = matmul_kernels(&model);
        let input_facts = model
            .input_outlets()
            .map(|outlets| {
                outlets
                    .iter()
                    .filter_map(|o| model.outlet_fact(*o).ok().map(|f| format!("{f:?}")))
                    .collect()
            })
            .unwrap_or_default();
        let plan = model
            .into_runnable()
            .map_err(tract_err("build the execution plan"))?;
        Ok(LoadedModel {
            key: key.to_owned(),
            spec,
            path,
            plan,
            kernels,
            input_facts,
            load_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.plan.run(inputs)
    }
}

fn datum_type(name: &str) -> Result<DatumType, String> {
    Ok(match name {
        "f32" => f32::datum_type(),
        "f16" => f16::datum_type(),
        "i64" => i64::datum_type(),
        "i32" => i32::datum_type(),
        "u8" => u8::datum_type(),
        "i8" => i8::datum_type(),
        other => return Err(format!("dtype `{other}` is not supported")),
    })
}

/// The distinct tract-linalg matmul kernels an optimised model uses, e.g. `avx512_mmm_f32_32x12`
/// on x86-64 or `arm64simd_mmm_f32_8x8_gen` on a Cortex-A72.
pub fn matmul_kernels(model: &TypedModel) -> Vec<String> {
    let mut names = BTreeSet::new();
    for node in model.nodes() {
        if let Some(op) = node.op_as::<OptMatMul>() {
            for mmm in &op.mmm {
                names.insert(mmm.name().to_string());
            }
        }
    }
    names.into_iter().collect()
}
