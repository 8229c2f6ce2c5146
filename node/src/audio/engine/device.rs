//! Opening cpal streams on real devices: choosing the device and its
//! configuration, and turning cpal's errors into messages that name the
//! device and say what to try.

use std::sync::{Arc, Mutex};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{
    BufferSize, Device, ErrorKind, SampleFormat, Stream, StreamConfig, SupportedStreamConfig,
};

use super::rt::{Capture, Playback, Shared};

/// The rate everything is stored and mixed at.
pub const ENGINE_RATE: u32 = 48_000;

/// A device as people know it: its id and name.
pub fn label(device: &Device) -> String {
    let id = device.id().map(|i| i.to_string()).unwrap_or_default();
    match device.description() {
        Ok(d) => format!("{id} ({})", d.name()),
        Err(_) => id,
    }
}

/// The audio host the engine opens devices with. On Linux always ALSA,
/// which reaches PulseAudio and PipeWire through their plugins: cpal
/// would pick its own PulseAudio host when a server runs and its feature
/// is on (it is in builds with dev-dependencies, for
/// `examples/cpal_loop.rs`), but that host does not report the server's
/// underruns, and the engine counts xruns.
pub fn host() -> Result<cpal::Host, String> {
    #[cfg(target_os = "linux")]
    return cpal::host_from_id(cpal::HostId::Alsa).map_err(|e| format!("ALSA: {e}"));
    #[cfg(not(target_os = "linux"))]
    Ok(cpal::default_host())
}

/// The device `id` (as `meshstudio devices` prints it; a bare ALSA name
/// also works), or the default one.
pub fn find(id: Option<&str>, input: bool) -> Result<Device, String> {
    let host = host()?;
    let kind = if input { "input" } else { "output" };
    let Some(id) = id else {
        let device = if input {
            host.default_input_device()
        } else {
            host.default_output_device()
        };
        return device.ok_or_else(|| {
            format!("no {kind} device: plug one in, or check `meshstudio devices`")
        });
    };
    // `alsa:hw:0,0` as `devices` prints it, or the bare ALSA name `hw:0,0`.
    let parsed: cpal::DeviceId = id
        .parse()
        .or_else(|_| format!("alsa:{id}").parse())
        .map_err(|e| format!("{kind} device {id:?}: {e}"))?;
    #[cfg(target_os = "linux")]
    let _quiet = alsa::Output::local_error_handler();
    host.device_by_id(&parsed).ok_or_else(|| {
        format!("no {kind} device {id:?}: `meshstudio devices` lists the ones there are")
    })
}

/// The configuration to open: 48 kHz when offered (else the device's
/// default rate), the device's channels, `buffer` frames when asked.
pub fn choose(
    device: &Device,
    input: bool,
    buffer: Option<u32>,
) -> Result<(StreamConfig, SampleFormat), String> {
    let name = label(device);
    let ranges: Vec<_> = if input {
        device.supported_input_configs().map(|c| c.collect())
    } else {
        device.supported_output_configs().map(|c| c.collect())
    }
    .map_err(|e| explain(&name, &e))?;
    let at_48k = ranges
        .iter()
        .filter(|r| usable(r.sample_format()))
        .filter_map(|r| r.try_with_sample_rate(ENGINE_RATE))
        // Stereo first (a sound server offers up to 32 channels), then float.
        .max_by_key(|c| {
            let ch = c.channels();
            (
                ch == 2,
                c.sample_format() == SampleFormat::F32,
                std::cmp::Reverse(ch),
            )
        });
    let config: SupportedStreamConfig = match at_48k {
        Some(c) => c,
        None => if input {
            device.default_input_config()
        } else {
            device.default_output_config()
        }
        .map_err(|e| explain(&name, &e))?,
    };
    if !usable(config.sample_format()) {
        return Err(format!(
            "{name}: sample format {} is not supported; try the ALSA `default` or `plughw` device",
            config.sample_format()
        ));
    }
    let mut stream = config.config();
    stream.buffer_size = buffer.map_or(BufferSize::Default, BufferSize::Fixed);
    Ok((stream, config.sample_format()))
}

fn usable(f: SampleFormat) -> bool {
    matches!(f, SampleFormat::F32 | SampleFormat::I16 | SampleFormat::I32)
}

/// A cpal error, with the device it concerns and what to try.
pub fn explain(device: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "{device}: {e}. Check that it is plugged in and not used by another program, and that the sound server runs (`pactl info`)"
    )
}

/// What the streams' error callbacks report (they may allocate and lock:
/// they are not the audio callbacks).
#[derive(Default)]
pub struct DeviceNews {
    /// An error that ends the session (the device is gone).
    pub fatal: Mutex<Option<String>>,
    /// The latest error the stream recovered from, to explain a stall.
    pub last: Mutex<Option<String>>,
}

impl DeviceNews {
    pub fn set_fatal(&self, message: String) {
        if let Ok(mut slot) = self.fatal.lock() {
            slot.get_or_insert(message);
        }
    }

    pub fn take_fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|mut s| s.take())
    }

    pub fn last(&self) -> Option<String> {
        self.last.lock().ok().and_then(|s| s.clone())
    }
}

pub type ErrorSlot = Arc<DeviceNews>;

/// Xruns are counted (cpal recovers from them); a device that went away
/// ends the session; anything else is kept in case the stream stalls.
fn on_error(
    slot: &ErrorSlot,
    shared: &Arc<Shared>,
    name: String,
) -> impl FnMut(cpal::Error) + Send + 'static {
    let (slot, shared) = (slot.clone(), shared.clone());
    move |e| match e.kind() {
        ErrorKind::Xrun => {
            shared
                .xruns
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ErrorKind::DeviceNotAvailable
        | ErrorKind::HostUnavailable
        | ErrorKind::StreamInvalidated => {
            slot.set_fatal(explain(&name, &e));
        }
        _ => {
            if let Ok(mut last) = slot.last.lock() {
                *last = Some(explain(&name, &e));
            }
        }
    }
}

fn ns(instant: cpal::StreamInstant) -> u64 {
    instant.as_nanos() as u64
}

fn span(later: cpal::StreamInstant, earlier: cpal::StreamInstant) -> u64 {
    later.saturating_duration_since(earlier).as_nanos() as u64
}

/// Starts a stream cpal built, or says why not, naming the device.
fn start(built: Result<Stream, cpal::Error>, name: &str) -> Result<Stream, String> {
    let stream = built.map_err(|e| explain(name, &e))?;
    stream.play().map_err(|e| explain(name, &e))?;
    Ok(stream)
}

pub fn open_input(
    device: &Device,
    config: &StreamConfig,
    format: SampleFormat,
    mut capture: Capture,
    errors: &ErrorSlot,
) -> Result<Stream, String> {
    let name = label(device);
    let err = on_error(errors, &capture.shared, name.clone());
    macro_rules! build {
        ($t:ty) => {
            device.build_input_stream::<$t, _, _>(
                config.clone(),
                move |data: &[$t], info: &cpal::InputCallbackInfo| {
                    let t = info.timestamp();
                    capture.process(data, ns(t.capture), span(t.callback, t.capture));
                },
                err,
                None,
            )
        };
    }
    let built = match format {
        SampleFormat::I16 => build!(i16),
        SampleFormat::I32 => build!(i32),
        _ => build!(f32),
    };
    start(built, &name)
}

pub fn open_output(
    device: &Device,
    config: &StreamConfig,
    format: SampleFormat,
    mut playback: Playback,
    errors: &ErrorSlot,
) -> Result<Stream, String> {
    let name = label(device);
    let err = on_error(errors, &playback.shared, name.clone());
    macro_rules! build {
        ($t:ty) => {
            device.build_output_stream::<$t, _, _>(
                config.clone(),
                move |data: &mut [$t], info: &cpal::OutputCallbackInfo| {
                    let t = info.timestamp();
                    let _ = playback.process(data, ns(t.playback), span(t.playback, t.callback));
                },
                err,
                None,
            )
        };
    }
    let built = match format {
        SampleFormat::I16 => build!(i16),
        SampleFormat::I32 => build!(i32),
        _ => build!(f32),
    };
    start(built, &name)
}
