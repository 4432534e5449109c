//! Two optimised plans of one model holding one copy of its weights: the constants of the second
//! plan are pointed at the byte-identical ones of the first (`BatchPlan::SymbolicAndSingle`).

use std::collections::HashMap;
use std::sync::Arc;

use tract_linalg::mmm::MMMInputValue;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

/// Constants of a second plan pointed at the equal constants of the first
/// ([`share_constants`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SharedConstants {
    /// Bytes the second plan reads from the first plan's constants.
    pub shared_bytes: usize,
    /// Bytes of constants only the second plan has (different packing, or its own folds).
    pub own_bytes: usize,
}

/// Point every constant of `model` that equals one of `donor`'s at the donor's copy, so two
/// plans of one model (symbolic and bound to batch 1) hold their weights once: graph constants
/// (a `Const` node, e.g. the word table) and the packed weights tract bakes into each
/// `OptMatMul`. Both plans are optimised from the same graph, so a weight packed for the same
/// kernel is byte-identical; one packed differently (another kernel picked) stays the plan's own.
pub fn share_constants(donor: &TypedModel, model: &mut TypedModel) -> TractResult<SharedConstants> {
    let mut tensors: HashMap<(DatumType, TVec<usize>), Vec<&Arc<Tensor>>> = HashMap::new();
    let mut packed: HashMap<(usize, usize), Vec<&dyn MMMInputValue>> = HashMap::new();
    for node in donor.nodes() {
        if let Some(c) = node.op_as::<Const>() {
            let t = c.val();
            tensors
                .entry((t.datum_type(), t.shape().into()))
                .or_default()
                .push(t);
        }
        for value in node
            .op_as::<OptMatMul>()
            .into_iter()
            .flat_map(baked_operands)
        {
            packed
                .entry((value.k(), value.mn()))
                .or_default()
                .push(value);
        }
    }
    let mut shared = SharedConstants::default();
    for node in model.nodes_mut() {
        if let Some(c) = node.op_as::<Const>() {
            let t = c.val();
            let bytes = constant_bytes(t);
            let found = tensors
                .get(&(t.datum_type(), t.shape().into()))
                .and_then(|same_shape| same_shape.iter().find(|d| ****d == **t));
            let Some(&donor_tensor) = found else {
                shared.own_bytes += bytes;
                continue;
            };
            let konst = Const::new_with_opt_exotic_fact(
                Arc::clone(donor_tensor),
                c.exotic_fact()
                    .map(tract_onnx::tract_core::dyn_clone::clone_box),
            )?;
            if let Some(output) = node.outputs.first_mut() {
                output.fact.konst = Some(Arc::clone(donor_tensor));
            }
            node.op = Box::new(konst);
            shared.shared_bytes += bytes;
        } else if let Some(op) = node.op_as_mut::<OptMatMul>() {
            for spec in &mut op.micro_ops {
                let ProtoFusedSpec::AddMatMul { a, b, .. } = spec else {
                    continue;
                };
                for operand in [a, b] {
                    let MatMulOperand::Const(value) = operand else {
                        continue;
                    };
                    let bytes = packed_bytes(&**value);
                    let found = packed
                        .get(&(value.k(), value.mn()))
                        .and_then(|same_shape| same_shape.iter().find(|d| ***d == **value));
                    match found {
                        Some(donor_value) => {
                            *value = tract_onnx::tract_core::dyn_clone::clone_box(*donor_value);
                            shared.shared_bytes += bytes;
                        }
                        None => shared.own_bytes += bytes,
                    }
                }
            }
        }
    }
    Ok(shared)
}

/// The packed weights tract baked into a matmul (operands that were constants).
fn baked_operands(op: &OptMatMul) -> impl Iterator<Item = &dyn MMMInputValue> {
    op.micro_ops.iter().flat_map(|spec| match spec {
        ProtoFusedSpec::AddMatMul { a, b, .. } => [a, b]
            .into_iter()
            .filter_map(|operand| match operand {
                MatMulOperand::Const(value) => Some(&**value),
                MatMulOperand::Input(_) => None,
            })
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    })
}

/// The bytes a constant tensor holds: plain data or quantized blocks (packed weights are baked
/// into the matmuls, [`packed_bytes`]).
fn constant_bytes(t: &Tensor) -> usize {
    use tract_linalg::block_quant::BlockQuantStorage;
    use tract_onnx::prelude::tract_data::prelude::TensorStorage;
    if t.is_plain() {
        return t.len() * t.datum_type().size_of();
    }
    t.storage_as::<BlockQuantStorage>()
        .map_or(0, |b| b.byte_len())
}

/// The bytes of one packed matmul operand (plain panels, or panels a extractor widens).
fn packed_bytes(value: &dyn MMMInputValue) -> usize {
    use tract_linalg::mmm::{EagerPackedInput, PanelExtractInput};
    if let Some(eager) = value.downcast_ref::<EagerPackedInput>() {
        eager.packed.len()
    } else if let Some(extract) = value.downcast_ref::<PanelExtractInput>() {
        extract.data.packed.len()
    } else {
        0
    }
}
