//! Opening cpal streams on real devices: choosing the device and its
//! configuration, and turning cpal's errors into messages that name the
//! device and say what to try.

use std::sync::{Arc, Mutex};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{BufferSize, Device, SampleFormat, Stream, StreamConfig, SupportedStreamConfig};

use super::rt::{Capture, Playback};

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

/// The device `id` (as `meshstudio devices` prints it; a bare ALSA name
/// also works), or the default one.
pub fn find(id: Option<&str>, input: bool) -> Result<Device, String> {
    let host = cpal::default_host();
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
    let full = if id.contains(':') {
        id.to_string()
    } else {
        format!("alsa:{id}")
    };
    let parsed: cpal::DeviceId = full
        .parse()
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
        .max_by_key(|c| (c.sample_format() == SampleFormat::F32, c.channels().min(2)));
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

/// Where the stream error callback leaves its news (it may allocate: it
/// is not the audio callback).
pub type ErrorSlot = Arc<Mutex<Option<String>>>;

fn on_error(slot: &ErrorSlot, name: String) -> impl FnMut(cpal::Error) + Send + 'static {
    let slot = slot.clone();
    move |e| {
        if let Ok(mut first) = slot.lock()
            && first.is_none()
        {
            *first = Some(explain(&name, &e));
        }
    }
}

fn ns(instant: cpal::StreamInstant) -> u64 {
    instant.as_nanos() as u64
}

fn span(later: cpal::StreamInstant, earlier: cpal::StreamInstant) -> u64 {
    later.saturating_duration_since(earlier).as_nanos() as u64
}

pub fn open_input(
    device: &Device,
    config: &StreamConfig,
    format: SampleFormat,
    mut capture: Capture,
    errors: &ErrorSlot,
) -> Result<Stream, String> {
    let name = label(device);
    let err = on_error(errors, name.clone());
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
    let stream = match format {
        SampleFormat::I16 => build!(i16),
        SampleFormat::I32 => build!(i32),
        _ => build!(f32),
    }
    .map_err(|e| explain(&name, &e))?;
    stream.play().map_err(|e| explain(&name, &e))?;
    Ok(stream)
}

pub fn open_output(
    device: &Device,
    config: &StreamConfig,
    format: SampleFormat,
    mut playback: Playback,
    errors: &ErrorSlot,
) -> Result<Stream, String> {
    let name = label(device);
    let err = on_error(errors, name.clone());
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
    let stream = match format {
        SampleFormat::I16 => build!(i16),
        SampleFormat::I32 => build!(i32),
        _ => build!(f32),
    }
    .map_err(|e| explain(&name, &e))?;
    stream.play().map_err(|e| explain(&name, &e))?;
    Ok(stream)
}
