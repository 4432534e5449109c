//! edgefuse: text, vision and audio encoders in tract, fused embeddings over MQTT.
//!
//! Data flows left to right: sources → [`preprocess`] → [`encoders`] → fusion → sinks; the
//! value types they pass along ([`types`]) sit below all of them.

pub mod app;
pub mod atomic_file;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cpu;
pub mod encoders;
pub mod error;
pub mod fusion;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod logging;
pub mod manifest;
pub mod mqtt;
pub mod pipeline;
pub mod preprocess;
pub mod reload;
pub mod samples;
pub mod semantic;
pub mod shared_space;
pub mod signals;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod systemd;
pub mod topology;
pub mod types;
