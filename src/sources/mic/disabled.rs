//! Stand-in when edgefuse is built without the `mic` feature.

use super::Mic;

pub fn spawn(_ctx: Mic) -> anyhow::Result<()> {
    anyhow::bail!("sources.mic is enabled but this build has no microphone support (feature `mic`)")
}
