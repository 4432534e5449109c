//! Loading one model into tract: sha256 check, concrete/symbolic input facts from the manifest,
//! optimisation, and a record of which tract-linalg kernels the optimiser picked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;

use super::compiled::ModelCache;
use super::plan_sharing::share_constants;
pub use super::plan_sharing::SharedConstants;
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
    pub source: ModelSource,
    pub load_ms: f64,
    /// The batch axis was bound to 1 at load ([`BatchPlan::PerItem`]): the encoder runs a
    /// batch one item at a time (`run_images` does for images).
    pub per_item: bool,
    /// A second plan bound to batch 1 that [`LoadedModel::run`] uses for a run of one item
    /// ([`BatchPlan::SymbolicAndSingle`]), and how much of its constants are the main plan's.
    single: Option<(Arc<TypedRunnableModel>, SharedConstants)>,
}

/// How a model's batch axis is planned at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPlan {
    /// One plan with the symbolic batch axis: a batch is one run.
    Symbolic,
    /// One plan with the batch axis bound to 1 (and every other symbol asserted >= 1); the
    /// encoder runs a batch one item at a time. tract 0.23.9 picks its depthwise and
    /// lazy-im2col convolutions only for a concrete input shape (tract-core
    /// ops/cnn/conv/conv.rs, `codegen`), and with a symbolic batch cannot prove an activation
    /// big enough for its by-scalar and unicast element-wise kernels (ops/binary.rs,
    /// `find_most_efficient_config`): the image classifier runs 4× faster bound
    /// (docs/performance.md).
    PerItem,
    /// Both: the symbolic plan for batches and a bound plan for a run of one item, the second
    /// holding the first's weights (not a copy). Text: one text runs 0.76–0.91× on the bound
    /// plan, but the symbolic plan is cheaper per text in batches of 4 (docs/performance.md).
    SymbolicAndSingle,
}

/// Where a model's typed graph came from at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    /// Parsed from the ONNX file (sha256-verified), typed and decluttered.
    Onnx,
    /// Read from the compiled-model cache (NNEF); only tract's optimiser ran.
    Compiled,
}

impl LoadedModel {
    /// Verify and load `models.<key>` of the manifest from its ONNX file.
    pub fn load(manifest: &Manifest, key: &str) -> Result<LoadedModel, ModelError> {
        Self::load_with(manifest, key, None)
    }

    /// Load `models.<key>`, from `cache` when it holds the compiled form, else from the verified
    /// ONNX file, saving the compiled form to `cache` for the next start. A cache that cannot be
    /// read or written costs time, never correctness: it is logged and bypassed.
    pub fn load_with(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
    ) -> Result<LoadedModel, ModelError> {
        Self::load_planned(manifest, key, cache, BatchPlan::Symbolic)
    }

    /// As [`LoadedModel::load_with`], with the batch axis planned as `batch` asks. The
    /// compiled-model cache always keeps the symbolic graph; binding happens after it.
    pub fn load_planned(
        manifest: &Manifest,
        key: &str,
        cache: Option<&ModelCache>,
        batch: BatchPlan,
    ) -> Result<LoadedModel, ModelError> {
        let started = Instant::now();
        let spec = manifest.model(key)?.clone();
        let path = manifest.path_of(&spec.file);
        let tract_err = |stage| tract_error(&spec, stage);
        let compiled = match cache.map(|c| c.read(&spec)) {
            Some(Ok(found)) => found,
            Some(Err(e)) => {
                tracing::warn!("compiled model unusable, rebuilding it from the ONNX file: {e}");
                if let Some(c) = cache {
                    c.remove(&spec);
                }
                None
            }
            None => None,
        };
        let (typed, source) = match compiled {
            Some(model) => (model, ModelSource::Compiled),
            None => {
                let model = typed_from_onnx(manifest, key, &spec, &path)?;
                if let Some(c) = cache {
                    match c.write(&spec, &model) {
                        Ok(p) => tracing::info!("compiled {} to {}", spec.name, p.display()),
                        Err(e) => tracing::warn!("cannot save the compiled model: {e}"),
                    }
                }
                (model, ModelSource::Onnx)
            }
        };
        let bound = |typed: TypedModel| {
            bind_batch_to_one(typed, &spec)
                .map_err(tract_err("bind the batch axis to 1"))?
                .into_optimized()
                .map_err(tract_err("optimise the model bound to batch 1"))
        };
        let single_typed = match batch {
            BatchPlan::SymbolicAndSingle => Some(typed.clone()),
            BatchPlan::Symbolic | BatchPlan::PerItem => None,
        };
        let model = match batch {
            BatchPlan::PerItem => bound(typed)?,
            BatchPlan::Symbolic | BatchPlan::SymbolicAndSingle => typed
                .into_optimized()
                .map_err(tract_err("optimise the model"))?,
        };
        let mut kernels = matmul_kernels(&model);
        let single = match single_typed {
            Some(typed) => {
                let mut single = bound(typed)?;
                let shared = share_constants(&model, &mut single)
                    .map_err(tract_err("share the weights of the single-item plan"))?;
                tracing::debug!(
                    "{}: single-item plan shares {:.1} MB of constants with the batch plan, \
                     holds {:.1} MB of its own",
                    spec.name,
                    shared.shared_bytes as f64 / 1e6,
                    shared.own_bytes as f64 / 1e6
                );
                kernels.extend(matmul_kernels(&single));
                kernels.sort();
                kernels.dedup();
                let plan = single
                    .into_runnable()
                    .map_err(tract_err("build the single-item plan"))?;
                Some((plan, shared))
            }
            None => None,
        };
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
            source,
            load_ms: started.elapsed().as_secs_f64() * 1e3,
            per_item: batch == BatchPlan::PerItem,
            single,
        })
    }

    /// The plan a run of one item takes: the single-item plan when there is one.
    pub fn plan_for_one(&self) -> &Arc<TypedRunnableModel> {
        self.single.as_ref().map_or(&self.plan, |(plan, _)| plan)
    }

    /// With a single-item plan: how much of its constants are the main plan's.
    pub fn single_plan_constants(&self) -> Option<SharedConstants> {
        self.single.as_ref().map(|(_, shared)| *shared)
    }

    /// Run the model; a run of one item (axis 0 of every input is 1) takes the single-item
    /// plan when there is one.
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        match &self.single {
            Some((single, _)) if inputs.iter().all(|i| i.shape().first() == Some(&1)) => {
                single.run(inputs)
            }
            _ => self.plan.run(inputs),
        }
    }

    /// Run an image model on `n` preprocessed NCHW crops of `crop`×`crop`: its first output,
    /// flattened, and the inference time in ms.
    pub fn run_images(
        &self,
        data: &[f32],
        n: usize,
        crop: usize,
    ) -> Result<(Vec<f32>, f64), crate::error::InputError> {
        let started = Instant::now();
        let (runs, per_run) = if self.per_item { (n, 1) } else { (1, n) };
        let chunk = per_run * 3 * crop * crop;
        if data.len() != n * 3 * crop * crop {
            // image_batch reports the shape mismatch.
            image_batch(data, n, crop)?;
        }
        let mut flat = Vec::new();
        for images in data.chunks(chunk.max(1)).take(runs) {
            let outputs = self
                .run(tvec![image_batch(images, per_run, crop)?.into()])
                .map_err(super::inference_error)?;
            let out = outputs[0]
                .to_plain_array_view::<f32>()
                .map_err(super::inference_error)?;
            flat.extend(out.iter().copied());
        }
        Ok((flat, started.elapsed().as_secs_f64() * 1e3))
    }
}

/// `typed` with every input's symbolic axis 0 (the manifest's batch symbol) set to 1, and the
/// other symbols (a text's `sequence`) asserted to be at least 1.
fn bind_batch_to_one(typed: TypedModel, spec: &ModelSpec) -> TractResult<TypedModel> {
    let batch: std::collections::HashSet<&str> = spec
        .inputs
        .iter()
        .filter_map(|input| match input.shape.first() {
            Some(Dim::Symbol(s)) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let subs: std::collections::HashMap<_, _> = batch
        .iter()
        .map(|s| (typed.symbols.sym(s), 1.to_dim()))
        .collect();
    let typed = if subs.is_empty() {
        typed
    } else {
        typed.set_symbols(&subs)?
    };
    let others: std::collections::BTreeSet<&str> = spec
        .inputs
        .iter()
        .flat_map(|input| input.shape.iter())
        .filter_map(|d| match d {
            Dim::Symbol(s) if !batch.contains(s.as_str()) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    for s in others {
        typed.symbols.add_assertion(format!("{s}>=1"))?;
    }
    Ok(typed)
}

/// `n` preprocessed NCHW crops of `crop`×`crop` as one input tensor.
pub fn image_batch(
    data: &[f32],
    n: usize,
    crop: usize,
) -> Result<Tensor, crate::error::InputError> {
    Tensor::from_shape(&[n, 3, crop, crop], data).map_err(super::inference_error)
}

/// Maps a tract error at `stage` of loading `spec` to a [`ModelError`] naming both.
fn tract_error(spec: &ModelSpec, stage: &'static str) -> impl Fn(TractError) -> ModelError {
    let model = spec.name.clone();
    move |e| ModelError::Tract {
        model: model.clone(),
        stage,
        message: format!("{e:#}"),
    }
}

/// Verify the ONNX file against the manifest, parse it, apply the manifest's input facts and
/// outputs, type it, decode compressed weights and declutter: everything before tract's
/// CPU-specific optimiser, which is what the compiled-model cache stores.
fn typed_from_onnx(
    manifest: &Manifest,
    key: &str,
    spec: &ModelSpec,
    path: &Path,
) -> Result<TypedModel, ModelError> {
    let tract_err = |stage| tract_error(spec, stage);
    let bytes = read_verified(path, &spec.sha256)?;
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
    let mut model = model
        .with_outputs_by_name(names)
        .map_err(tract_err("select the outputs"))?
        .into_typed()
        .map_err(tract_err("type the model"))?;
    decode_compressed_weights(&mut model).map_err(tract_err("decode compressed weights"))?;
    let model = model
        .into_decluttered()
        .map_err(tract_err("declutter the model"))?;
    weights_in_memory(model, spec).map_err(tract_err("requantize the weights"))
}

/// Evaluate, once at load, the constant chains that turn stored f16 / int8 weights back into f32
/// (`Cast`, `DequantizeLinear` of an initializer). tract's own constant folding leaves an
/// output larger than its input unfolded to save memory, which would redo the decoding on every
/// run; a variant stored as f16 or int8 weights is meant to be small on disk, not slow.
/// Only chains that start at an f16/i8/u8 constant and end in f32 are folded, so fp32 originals
/// and integer kernels (MatMulInteger) are untouched.
fn decode_compressed_weights(model: &mut TypedModel) -> TractResult<()> {
    use tract_onnx::tract_core::ops::konst::Const;
    let compressed =
        |dt: DatumType| dt == f16::datum_type() || dt == i8::datum_type() || dt == u8::datum_type();
    // Constants produced by a fold: the rest of a chain may consume them.
    let mut decoded: BTreeSet<String> = BTreeSet::new();
    'restart: loop {
        for id in model.eval_order()? {
            let node = model.node(id);
            if node.op_is::<Const>() || node.inputs.is_empty() || node.outputs.len() != 1 {
                continue;
            }
            let facts: Vec<TypedFact> = model.node_input_facts(id)?.into_iter().cloned().collect();
            if facts.iter().any(|f| f.konst.is_none()) {
                continue;
            }
            let starts_chain = node.inputs.iter().zip(&facts).any(|(o, f)| {
                compressed(f.datum_type) || decoded.contains(&model.node(o.node).name)
            });
            if !starts_chain || node.outputs[0].fact.datum_type != f32::datum_type() {
                continue;
            }
            let inputs = facts
                .iter()
                .filter_map(|f| f.konst.clone())
                .map(|t| t.into_tvalue())
                .collect();
            let Some(mut out) = node.op.eval_out_of_plan(inputs)? else {
                continue;
            };
            let name = format!("{}.decoded", node.name);
            drop(facts);
            let mut patch = TypedModelPatch::default();
            let wire = patch.add_const(&name, out.remove(0).into_arc_tensor())?;
            patch.shunt_outside(model, id.into(), wire)?;
            patch.apply(model)?;
            decoded.insert(name);
            continue 'restart;
        }
        break;
    }
    model.compact()
}

/// The in-memory weight format the manifest asks for (`weights_in_memory`). By default large
/// lookup tables are held as f16 (`quantize_lookup_tables`: half the memory of MiniLM's word
/// table, a `Gather` reads only a text's rows) and everything else as f32; `f32` keeps the
/// tables f32 too. `q4_0` also runs tract's `block_quant` transform: every constant 2-D matmul
/// operand becomes Q4_0 blocks (32 weights, 4 bits each, one f16 scale: 4.5 bits a weight) that
/// the matmul unpacks panel by panel. Applied before the compiled-model cache, which stores the
/// requantized graph (NNEF has both block formats): a later start reads the small graph and
/// never holds the f32 weights.
fn weights_in_memory(model: TypedModel, spec: &ModelSpec) -> TractResult<TypedModel> {
    match spec.weights_in_memory.as_deref() {
        Some("f32") => Ok(model),
        None => {
            let mut model = model;
            quantize_lookup_tables(&mut model)?;
            Ok(model)
        }
        Some("q4_0") => {
            let transform = tract_onnx::tract_core::transform::get_transform("block_quant")?
                .ok_or_else(|| anyhow::anyhow!("tract has no block_quant transform"))?;
            let mut model = transform.transform_into(model)?;
            quantize_lookup_tables(&mut model)?;
            Ok(model)
        }
        Some(other) => anyhow::bail!("weights_in_memory = {other:?}: expected \"f32\" or \"q4_0\""),
    }
}

/// Lookup tables (a `Gather` on axis 0 of a large f32 constant, e.g. MiniLM's 30522 × 384 word
/// table) held as f16: the `Gather` reads f16 rows and only those are cast to f32. (tract's
/// Q8_1 blocks would be smaller, but tract-nnef 0.23.9 writes them and cannot read them back,
/// which would defeat the compiled-model cache.) Tables under 1 Mi values stay f32, and so do
/// tables something else reads too (an output projection tied to the token table would then
/// hold both copies).
fn quantize_lookup_tables(model: &mut TypedModel) -> TractResult<()> {
    use tract_onnx::tract_core::ops::array::Gather;
    use tract_onnx::tract_core::ops::cast::cast;
    use tract_onnx::tract_core::ops::konst::Const;
    let mut patches = Vec::new();
    for node in model.nodes() {
        let Some(gather) = node.op_as::<Gather>() else {
            continue;
        };
        let Some(table) = model.node(node.inputs[0].node).op_as::<Const>() else {
            continue;
        };
        let t = table.val();
        let table_readers = model.node(node.inputs[0].node).outputs[0].successors.len();
        if gather.output_type.is_some()
            || table_readers != 1
            || t.datum_type() != f32::datum_type()
            || !t.is_plain()
            || t.len() < 1 << 20
        {
            continue;
        }
        let half = t.cast_to::<f16>()?.into_owned();
        let mut patch = TypedModelPatch::default();
        let konst = patch.wire_node(
            format!("{}.f16", model.node(node.inputs[0].node).name),
            Const::new(half.into_arc_tensor())?,
            &[],
        )?[0];
        let indices = patch.tap_model(model, node.inputs[1])?;
        let rows = patch.wire_node(&node.name, gather.clone(), &[konst, indices])?[0];
        let out = patch.wire_node(
            format!("{}.f32", node.name),
            cast(f32::datum_type()),
            &[rows],
        )?[0];
        patch.shunt_outside(model, node.id.into(), out)?;
        patches.push(patch);
    }
    for patch in patches {
        patch.apply(model)?;
    }
    model.compact()
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
