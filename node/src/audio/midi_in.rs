//! MIDI input, behind a small trait: midir over the ALSA sequencer in
//! production; the test build uses midir's JACK backend (this container,
//! like many, has no ALSA sequencer). The port's callback only stamps each
//! channel message with the time it arrived and pushes it into a
//! preallocated lock-free ring: no allocation, no locks, no I/O.

use std::time::Instant;

use rtrb::Producer;

/// Messages the ring between a MIDI port and the engine holds: a whole
/// keyboard's worth of chords between two audio callbacks, many times over.
pub const ARRIVAL_RING: usize = 4096;
/// What meshstudio calls itself to the MIDI system.
const CLIENT_NAME: &str = "meshstudio";

/// One channel message as it arrived from a port.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    pub len: u8,
    pub bytes: [u8; 3],
}

impl Arrival {
    /// A channel voice message (status 0x80..=0xEF, ≤ 3 bytes); others (clock,
    /// active sensing, system exclusive) are not for us.
    pub fn channel_message(at: Instant, message: &[u8]) -> Option<Arrival> {
        let status = *message.first()?;
        if !(0x80..0xF0).contains(&status) || message.len() > 3 {
            return None;
        }
        let mut bytes = [0; 3];
        bytes[..message.len()].copy_from_slice(message);
        Some(Arrival {
            at,
            len: message.len() as u8,
            bytes,
        })
    }

    pub fn message(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Where MIDI comes from.
pub trait MidiInputs {
    /// The input ports' names.
    fn ports(&self) -> Result<Vec<String>, String>;
    /// Connects to the port `name` names (its full name, or a part of one
    /// name only); messages go into `ring`. Dropping the returned value
    /// closes the connection.
    fn connect(&self, name: &str, ring: Producer<Arrival>) -> Result<Box<dyn Send>, String>;
}

/// The system's MIDI through midir.
pub struct Midir;

impl Midir {
    fn input() -> Result<midir::MidiInput, String> {
        let mut input = midir::MidiInput::new(CLIENT_NAME).map_err(|e| {
            format!(
                "{e} (on Linux MIDI needs the ALSA sequencer, /dev/snd/seq: `modprobe snd-seq`)"
            )
        })?;
        input.ignore(midir::Ignore::All);
        Ok(input)
    }
}

impl MidiInputs for Midir {
    fn ports(&self) -> Result<Vec<String>, String> {
        let input = Self::input()?;
        Ok(input
            .ports()
            .iter()
            .filter_map(|p| input.port_name(p).ok())
            .collect())
    }

    fn connect(&self, name: &str, mut ring: Producer<Arrival>) -> Result<Box<dyn Send>, String> {
        let input = Self::input()?;
        let ports = input.ports();
        let names: Vec<String> = ports
            .iter()
            .map(|p| input.port_name(p).unwrap_or_default())
            .collect();
        let index = pick_port(name, &names)?;
        let connection = input
            .connect(
                &ports[index],
                "in",
                move |_, message, _| {
                    if let Some(a) = Arrival::channel_message(Instant::now(), message) {
                        let _ = ring.push(a); // a full ring drops: the engine counts what it misses
                    }
                },
                (),
            )
            .map_err(|e| format!("cannot open MIDI input {:?}: {e}", names[index]))?;
        Ok(Box::new(connection))
    }
}

/// The port `wanted` names: an exact name, else the one name containing it.
fn pick_port(wanted: &str, names: &[String]) -> Result<usize, String> {
    if let Some(i) = names.iter().position(|n| n == wanted) {
        return Ok(i);
    }
    let matching: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].contains(wanted))
        .collect();
    match matching.as_slice() {
        [i] => Ok(*i),
        [] if names.is_empty() => Err(format!(
            "no MIDI input {wanted:?}: no MIDI inputs at all (is the keyboard plugged in?)"
        )),
        [] => Err(format!(
            "no MIDI input {wanted:?}; inputs: {}",
            names.join(", ")
        )),
        many => Err(format!(
            "{wanted:?} names {} MIDI inputs: {}; give more of the name",
            many.len(),
            many.iter()
                .map(|&i| names[i].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_channel_messages_arrive() {
        let now = Instant::now();
        assert!(Arrival::channel_message(now, &[0x90, 60, 100]).is_some());
        assert!(Arrival::channel_message(now, &[0xC3, 5]).is_some());
        assert!(Arrival::channel_message(now, &[0xF8]).is_none());
        assert!(Arrival::channel_message(now, &[0xF0, 1, 2, 3, 0xF7]).is_none());
        assert!(Arrival::channel_message(now, &[]).is_none());
        assert_eq!(
            Arrival::channel_message(now, &[0xB0, 64, 127]).map(|a| a.message().to_vec()),
            Some(vec![0xB0, 64, 127])
        );
    }

    #[test]
    fn ports_are_picked_by_name_or_a_unique_part() {
        let names = [
            "a2j:Keystation [20] (capture): Keystation MIDI 1".to_string(),
            "test:out".into(),
        ];
        assert_eq!(pick_port("test:out", &names), Ok(1));
        assert_eq!(pick_port("Keystation", &names), Ok(0));
        assert!(
            pick_port(":", &names)
                .unwrap_err()
                .contains("2 MIDI inputs")
        );
        assert!(pick_port("nope", &names).unwrap_err().contains("test:out"));
        assert!(pick_port("x", &[]).unwrap_err().contains("no MIDI inputs"));
    }
}
