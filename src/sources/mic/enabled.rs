//! Capture through cpal on a dedicated thread (cpal streams are not `Send`).

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::SampleFormat;

use super::Mic;
use super::{mix_to_mono, passes_energy_gate, ToF32, Windower};
use crate::pipeline::Body;
use crate::sources::live_request;
use crate::types::Modality;

/// Open the configured input device and start capturing; returns once the stream runs.
pub fn spawn(ctx: Mic) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = std_mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("mic".into())
        .spawn(move || {
            if let Err(e) = capture(ctx, &ready_tx) {
                let _ = ready_tx.send(Err(e));
            }
        })
        .context("cannot start the microphone thread")?;
    ready_rx
        .recv()
        .map_err(|_| anyhow!("the microphone thread ended before it started"))?
}

fn capture(ctx: Mic, ready: &std_mpsc::Sender<anyhow::Result<()>>) -> anyhow::Result<()> {
    let host = cpal::default_host();
    let wanted = ctx.config.device.trim();
    let device = if wanted.is_empty() || wanted == "default" {
        host.default_input_device()
            .ok_or_else(|| anyhow!("no default audio input device"))?
    } else {
        let mut names = Vec::new();
        let mut found = None;
        for d in host
            .input_devices()
            .context("cannot list audio input devices")?
        {
            let name = d.name().unwrap_or_default();
            if name == wanted {
                found = Some(d);
                break;
            }
            names.push(name);
        }
        found.ok_or_else(|| {
            anyhow!(
                "no audio input device named {wanted:?} (found: {})",
                names.join(", ")
            )
        })?
    };
    let supported = device
        .default_input_config()
        .context("the audio input device reports no usable configuration")?;
    let rate = supported.sample_rate().0;
    let channels = usize::from(supported.channels());
    let format = supported.sample_format();
    let stream_config: cpal::StreamConfig = supported.into();
    let (tx, rx) = std_mpsc::sync_channel::<Vec<f32>>(64);
    let err_fn = |e| tracing::warn!("microphone stream error: {e}");
    macro_rules! build {
        ($t:ty) => {{
            let tx = tx.clone();
            device.build_input_stream(
                &stream_config,
                move |data: &[$t], _: &cpal::InputCallbackInfo| {
                    let f: Vec<f32> = data.iter().map(|s| s.to_f32()).collect();
                    // The callback must never block: a full channel drops this buffer.
                    let _ = tx.try_send(mix_to_mono(&f, channels));
                },
                err_fn,
                None,
            )
        }};
    }
    let stream = match format {
        SampleFormat::F32 => build!(f32),
        SampleFormat::I16 => build!(i16),
        SampleFormat::U16 => build!(u16),
        SampleFormat::I32 => build!(i32),
        SampleFormat::U8 => build!(u8),
        other => return Err(anyhow!("unsupported microphone sample format {other:?}")),
    }
    .context("cannot open the microphone stream")?;
    drop(tx);
    stream
        .play()
        .context("cannot start the microphone stream")?;
    tracing::info!(rate, channels, ?format, "microphone capturing");
    let _ = ready.send(Ok(()));

    let c = &ctx.config;
    let mut windows = Windower::new(
        (c.window_s * f64::from(rate)) as usize,
        (c.hop_s * f64::from(rate)) as usize,
    );
    while !ctx.cancel.is_cancelled() {
        let Ok(chunk) = rx.recv_timeout(std::time::Duration::from_millis(200)) else {
            continue;
        };
        for window in windows.push(&chunk) {
            if !passes_energy_gate(&window, c.energy_gate_dbfs) {
                continue;
            }
            if let Some(vad) = &ctx.vad {
                match vad.speech_probability(&window, rate) {
                    Ok(p) if p < c.vad_threshold => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!("VAD failed, passing the window through: {e}"),
                }
            }
            ctx.queue.push(live_request(
                "mic",
                Modality::Audio,
                Body::Samples {
                    samples: Arc::new(window),
                    rate,
                },
                "mic".into(),
                &c.group,
            ));
        }
    }
    drop(stream);
    ctx.queue.close();
    Ok(())
}
