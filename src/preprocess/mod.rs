//! Preprocessing: pure, synchronous, no I/O. Bytes or strings in, model-ready tensors out.
//! Every constant comes from the model manifest.

pub mod audio;
pub mod image;
pub mod mel;
pub mod resample;
pub mod text;
pub mod wav;
