//! Sinks: where results go. Today that is MQTT (embeddings, fused records, labels, errors),
//! through the store-and-forward spool.

pub mod publisher;
pub mod spool;
pub mod stats;
