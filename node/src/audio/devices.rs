//! `meshstudio devices`: the sound devices the audio host (ALSA, which
//! reaches PulseAudio/PipeWire through its plugins) offers, with what each
//! supports, and the MIDI inputs. Only lists; opening streams is the
//! engine's business.

use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{DeviceId, SupportedBufferSize, SupportedStreamConfigRange};
use serde_json::{Value, json};

use super::midi_in::{MidiInputs, Midir};

/// Sample rates worth naming; a device's ranges are reported as these.
const COMMON_RATES: &[u32] = &[
    8_000, 11_025, 16_000, 22_050, 32_000, 44_100, 48_000, 88_200, 96_000, 176_400, 192_000,
];

/// Every usable input and output device, the defaults marked. (ALSA also
/// names plugins that cannot open here — no configuration at all: left out.)
pub fn list() -> Result<Value, String> {
    // Listing opens every ALSA plugin; the ones that cannot open here make
    // alsa-lib print to stderr. Catch that on this thread and drop it.
    #[cfg(target_os = "linux")]
    let _quiet = alsa::Output::local_error_handler();
    let host = super::engine::device::host()?;
    let default_in = host.default_input_device().and_then(|d| d.id().ok());
    let default_out = host.default_output_device().and_then(|d| d.id().ok());
    let inputs: Vec<Value> = host
        .input_devices()
        .map_err(|e| format!("cannot list input devices: {e}"))?
        .filter_map(|d| describe(&d, d.supported_input_configs(), default_in.as_ref()))
        .collect();
    let outputs: Vec<Value> = host
        .output_devices()
        .map_err(|e| format!("cannot list output devices: {e}"))?
        .filter_map(|d| describe(&d, d.supported_output_configs(), default_out.as_ref()))
        .collect();
    let (midi_inputs, midi_error) = match Midir.ports() {
        Ok(ports) => (ports, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    Ok(json!({
        "host": host.id().name(),
        "inputs": inputs,
        "outputs": outputs,
        "midi_inputs": midi_inputs,
        "midi_error": midi_error,
    }))
}

fn describe<E>(
    device: &cpal::Device,
    configs: Result<impl Iterator<Item = SupportedStreamConfigRange>, E>,
    default: Option<&DeviceId>,
) -> Option<Value> {
    let id = device.id().ok();
    let name = device.description().map(|d| d.name().to_string()).ok();
    let configs: Vec<SupportedStreamConfigRange> = configs.map(|c| c.collect()).unwrap_or_default();
    if configs.is_empty() {
        return None;
    }
    let rates: Vec<u32> = COMMON_RATES
        .iter()
        .copied()
        .filter(|r| {
            configs
                .iter()
                .any(|c| (c.min_sample_rate()..=c.max_sample_rate()).contains(r))
        })
        .collect();
    let mut formats: Vec<String> = configs
        .iter()
        .map(|c| c.sample_format().to_string())
        .collect();
    formats.sort();
    formats.dedup();
    Some(json!({
        "id": id.as_ref().map(ToString::to_string),
        "name": name,
        "default": id.is_some() && id.as_ref() == default,
        "channels": configs.iter().map(|c| c.channels()).max(),
        "rates": rates,
        "formats": formats,
        "buffer_frames": buffer_range(&configs),
    }))
}

/// The widest buffer-size range any configuration allows, if known.
fn buffer_range(configs: &[SupportedStreamConfigRange]) -> Value {
    let ranges = configs.iter().filter_map(|c| match c.buffer_size() {
        SupportedBufferSize::Range { min, max } => Some((*min, *max)),
        SupportedBufferSize::Unknown => None,
    });
    let (min, max) = ranges.fold((u32::MAX, 0), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
    if max == 0 {
        return Value::Null;
    }
    json!({ "min": min, "max": max })
}
