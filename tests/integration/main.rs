//! The integration tests, built as one binary (ripgrep's habit): one module per area, and
//! `util` with what they share (fixtures, the golden references, config files, the spawned
//! daemon, brokers and subscribers, and the [`util::Harness`] that starts them together).
//!
//! Select an area with its module path: `cargo test --test integration encoders::`,
//! `cargo test --test integration reliability::`. Tests that must not overlap with the others
//! (they push thousands of inputs against deadlines) hold [`util::exclusive`].

mod util;

mod arm;
mod bench;
mod cli;
mod compiled;
mod daemon;
mod encoders;
mod fuzz_corpus;
mod image_words;
mod in_flight;
mod layers;
mod malformed;
mod multilingual;
mod payloads;
mod reliability;
mod security;
mod semantic;
mod service;
mod shared_space;
mod speech;
mod speech_daemon;
mod variants;
