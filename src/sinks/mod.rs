//! Sinks: where results go. Today that is MQTT (embeddings, fused records, labels, errors).

pub mod publisher;
