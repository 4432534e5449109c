//! Stand-in when edgefuse is built without the `mic` feature.

use super::super::super::app::MicContext;

pub fn spawn(_ctx: MicContext) -> anyhow::Result<()> {
    anyhow::bail!("sources.mic is enabled but this build has no microphone support (feature `mic`)")
}
