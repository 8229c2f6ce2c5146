//! The disk side of recording: a thread drains the capture ring into the
//! take file, so the callback never waits on a disk. The take is a float
//! WAV whose header is rewritten and synced every half second: after a
//! crash it reads back up to the last checkpoint, so `kill -9` loses at
//! most the last second.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use meshstudio_codec::{MidiEvent, WavFormat, WavWriter};
use rtrb::Consumer;

use super::engine::rt::Shared;

/// Checkpoints per second: the header rewrite + fdatasync.
const CHECKPOINTS_PER_SECOND: u64 = 2;
/// How long the disk thread sleeps when the ring is empty.
const IDLE: Duration = Duration::from_millis(5);
/// How long to wait for both streams' first timestamps before lining the
/// take up without them.
const TIMING_WAIT: Duration = Duration::from_secs(3);

/// Callbacks of each stream to wait for before lining a take up: enough
/// that the median of their timestamps is steady.
const ALIGN_MARKS: usize = 24;

/// Where captured samples go.
pub trait TakeSink: Send {
    fn write(&mut self, samples: &[f32]) -> std::io::Result<()>;
    /// Makes everything written so far survive a crash.
    fn checkpoint(&mut self) -> std::io::Result<()>;
    fn finish(self: Box<Self>) -> std::io::Result<Vec<f32>>;
}

/// A take streamed to a float WAV file.
pub struct WavTake {
    writer: WavWriter<BufWriter<File>>,
    file: File,
}

impl WavTake {
    pub fn create(path: &Path, channels: usize, rate: u32) -> std::io::Result<Self> {
        let file = File::create(path)?;
        let writer = WavWriter::new(
            BufWriter::new(file.try_clone()?),
            channels,
            rate,
            WavFormat::Float32,
        )
        .map_err(std::io::Error::other)?;
        Ok(WavTake { writer, file })
    }
}

impl TakeSink for WavTake {
    fn write(&mut self, samples: &[f32]) -> std::io::Result<()> {
        self.writer.write(samples).map_err(std::io::Error::other)
    }

    fn checkpoint(&mut self) -> std::io::Result<()> {
        self.writer.flush().map_err(std::io::Error::other)?;
        self.file.sync_data()
    }

    fn finish(self: Box<Self>) -> std::io::Result<Vec<f32>> {
        let WavTake { writer, file } = *self;
        writer.finish().map_err(std::io::Error::other)?;
        file.sync_all()?;
        Ok(Vec::new())
    }
}

/// A capture kept in memory (calibration: a few seconds).
#[derive(Default)]
pub struct MemTake(pub Vec<f32>);

impl TakeSink for MemTake {
    fn write(&mut self, samples: &[f32]) -> std::io::Result<()> {
        self.0.extend_from_slice(samples);
        Ok(())
    }

    fn checkpoint(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn finish(self: Box<Self>) -> std::io::Result<Vec<f32>> {
        Ok(self.0)
    }
}

/// Where the take's first frame is on the input stream.
#[derive(Debug, Clone, Copy)]
pub enum Align {
    /// The first captured frame (nothing plays along).
    Start,
    /// The frame that lines up with the timeline frame the take starts at,
    /// `lead_seconds` after the output's first frame: found from both
    /// streams' timestamps, less `residual_seconds` the timestamps miss
    /// (measured by `calibrate`). `timestamps: false` when the two sides
    /// run on different clocks (a file and a device): then only the lead counts.
    Timeline {
        lead_seconds: f64,
        residual_seconds: f64,
        timestamps: bool,
    },
}

impl Align {
    /// Input frames to drop (> 0) or silence to insert (< 0) before the
    /// take starts; `None` while the streams' timing is still unknown.
    fn skip_frames(&self, shared: &Shared, rate: u32, waited_out: bool) -> Option<i64> {
        let Align::Timeline {
            lead_seconds,
            residual_seconds,
            timestamps,
        } = *self
        else {
            return Some(0);
        };
        let settled =
            shared.in_marks.count() >= ALIGN_MARKS && shared.out_marks.count() >= ALIGN_MARKS;
        let offset = match (timestamps, settled || waited_out) {
            (false, _) => 0.0,
            (true, false) => return None,
            (true, true) => shared.offset_seconds(rate).unwrap_or(0.0),
        };
        Some(((lead_seconds - offset + residual_seconds) * f64::from(rate)).round() as i64)
    }
}

/// What the disk thread did.
#[derive(Debug, Default)]
pub struct DiskReport {
    pub frames: u64,
    /// Input frames dropped before the take's first frame, or (negative)
    /// silent frames put in front because the input started late.
    pub skipped: i64,
    pub samples: Vec<f32>,
}

/// The disk thread's inputs.
pub struct Disk {
    pub ring: Consumer<f32>,
    pub sink: Box<dyn TakeSink>,
    pub channels: usize,
    pub rate: u32,
    pub align: Align,
    /// Stop after this many take frames (`--seconds`).
    pub limit: Option<u64>,
}

impl Disk {
    /// Drains the ring into the sink until `stop` and the ring is empty,
    /// or the limit is reached (then `full` is set).
    pub fn run(
        mut self,
        shared: &Shared,
        stop: &AtomicBool,
        full: &AtomicBool,
        written: &AtomicU64,
    ) -> std::io::Result<DiskReport> {
        let ch = self.channels;
        let every = u64::from(self.rate) / CHECKPOINTS_PER_SECOND;
        let started = std::time::Instant::now();
        let mut skip = None;
        // Input frames still to drop before the take's first frame.
        let mut to_drop = 0i64;
        let mut frames = 0u64;
        let mut since_checkpoint = 0u64;
        loop {
            let stopping = stop.load(Ordering::Acquire);
            if skip.is_none() {
                let waited_out = stopping || started.elapsed() > TIMING_WAIT;
                skip = self.align.skip_frames(shared, self.rate, waited_out);
                to_drop = skip.unwrap_or(0).max(0);
                if let Some(silence) = skip.filter(|s| *s < 0) {
                    let zeros = vec![0.0; silence.unsigned_abs() as usize * ch];
                    self.sink.write(&zeros)?;
                    frames += silence.unsigned_abs();
                }
            }
            let available = self.ring.slots() / ch * ch;
            if available == 0 || skip.is_none() {
                if stopping && (available == 0 || skip.is_none()) {
                    break;
                }
                std::thread::sleep(IDLE);
                continue;
            }
            let chunk = self
                .ring
                .read_chunk(available)
                .map_err(std::io::Error::other)?;
            let (a, b) = chunk.as_slices();
            for part in [a, b] {
                let drop = to_drop.clamp(0, (part.len() / ch) as i64) as usize;
                to_drop -= drop as i64;
                let mut keep = &part[drop * ch..];
                if let Some(limit) = self.limit {
                    let room = limit.saturating_sub(frames) as usize;
                    keep = &keep[..keep.len().min(room * ch)];
                }
                self.sink.write(keep)?;
                frames += (keep.len() / ch) as u64;
                since_checkpoint += (keep.len() / ch) as u64;
            }
            chunk.commit_all();
            written.store(frames, Ordering::Relaxed);
            if since_checkpoint >= every {
                self.sink.checkpoint()?;
                since_checkpoint = 0;
            }
            if self.limit.is_some_and(|l| frames >= l) {
                full.store(true, Ordering::Release);
                break;
            }
        }
        let skipped = skip.unwrap_or(0);
        let samples = self.sink.finish()?;
        Ok(DiskReport {
            frames,
            skipped,
            samples,
        })
    }
}

/// A MIDI take as it is played: `MIDI_LOG_MAGIC`, then one 16-byte record
/// per message (output frame, u64 little-endian; status; two data bytes;
/// five zero bytes). Each batch goes to the file as it comes (MIDI is a
/// few hundred records a second at most), so a killed process loses only
/// what had not reached the disk thread; synced every half second like an
/// audio take, for power cuts. After a crash every whole record reads back.
pub struct MidiLog {
    writer: BufWriter<File>,
    file: File,
}

const MIDI_LOG_MAGIC: &[u8; 8] = b"MSMIDI1\n";
const MIDI_RECORD_BYTES: usize = 16;

impl MidiLog {
    pub fn create(path: &Path) -> std::io::Result<MidiLog> {
        let file = File::create(path)?;
        let mut writer = BufWriter::new(file.try_clone()?);
        std::io::Write::write_all(&mut writer, MIDI_LOG_MAGIC)?;
        Ok(MidiLog { writer, file })
    }

    pub fn write(&mut self, events: &[MidiEvent]) -> std::io::Result<()> {
        for e in events {
            let mut record = [0u8; MIDI_RECORD_BYTES];
            record[..8].copy_from_slice(&e.frame.to_le_bytes());
            record[8..11].copy_from_slice(&[e.status, e.data1, e.data2]);
            std::io::Write::write_all(&mut self.writer, &record)?;
        }
        Ok(())
    }

    /// Hands what was written to the OS: it survives the process.
    pub fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.writer)
    }

    pub fn checkpoint(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.writer)?;
        self.file.sync_data()
    }
}

/// Reads a MIDI take back: every whole record, in order (a torn last one
/// is dropped); at most what an SMF of ours holds; records that are not
/// channel messages (a damaged file) are skipped.
pub fn read_midi_log(path: &Path) -> std::io::Result<Vec<MidiEvent>> {
    use meshstudio_codec::midi::MAX_WRITTEN_EVENTS;
    let max = (MIDI_LOG_MAGIC.len() + MAX_WRITTEN_EVENTS * MIDI_RECORD_BYTES) as u64;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(File::open(path)?, max), &mut bytes)?;
    let Some(records) = bytes.strip_prefix(MIDI_LOG_MAGIC) else {
        let why = "not a meshstudio MIDI take";
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    };
    Ok(records
        .chunks_exact(MIDI_RECORD_BYTES)
        .filter_map(|r| {
            let frame = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
            MidiEvent::from_bytes(frame, &r[8..11])
        })
        .collect())
}

/// The MIDI take's thread: what the output callback stamped goes to the log.
pub struct MidiDisk {
    pub ring: Consumer<MidiEvent>,
    pub log: MidiLog,
}

/// After `stop`, how long the MIDI take waits for the output to close (its
/// callback may still stamp the last note-offs): the ring's producer goes
/// with the stream, but a dead device's stream is never closed.
const MIDI_STOP_GRACE: Duration = Duration::from_millis(500);

impl MidiDisk {
    /// Drains the ring into the log until the output that fills it is gone
    /// (or `stop` plus `MIDI_STOP_GRACE`); returns the events written.
    pub fn run(mut self, stop: &AtomicBool) -> std::io::Result<u64> {
        let mut batch = Vec::with_capacity(self.ring.buffer().capacity());
        let mut written = 0u64;
        let mut last_checkpoint = std::time::Instant::now();
        let mut stopped_at = None;
        loop {
            let gone = self.ring.is_abandoned();
            if stop.load(Ordering::Acquire) {
                stopped_at.get_or_insert_with(std::time::Instant::now);
            }
            let done = gone || stopped_at.is_some_and(|t| t.elapsed() >= MIDI_STOP_GRACE);
            batch.clear();
            while let Ok(e) = self.ring.pop() {
                batch.push(e);
            }
            if !batch.is_empty() {
                self.log.write(&batch)?;
                self.log.flush()?;
                written += batch.len() as u64;
            }
            let due = last_checkpoint.elapsed().as_millis() as u64 >= 1000 / CHECKPOINTS_PER_SECOND;
            if done || due {
                self.log.checkpoint()?;
                last_checkpoint = std::time::Instant::now();
            }
            if done {
                return Ok(written);
            }
            std::thread::sleep(IDLE);
        }
    }
}

#[cfg(test)]
mod midi_log_tests {
    use super::*;

    #[test]
    fn a_midi_log_reads_back_whole_records_after_a_torn_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.mev");
        let events = [
            MidiEvent::from_bytes(10, &[0x90, 60, 100]).expect("note"),
            MidiEvent::from_bytes(4800, &[0x80, 60, 0]).expect("note off"),
            MidiEvent::from_bytes(9600, &[0xE1, 0, 64]).expect("bend"),
        ];
        let mut log = MidiLog::create(&path).expect("create");
        log.write(&events).expect("write");
        log.checkpoint().expect("sync");
        drop(log);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&[1, 2, 3]); // a record cut short by a crash
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(read_midi_log(&path).expect("reads"), events);
        std::fs::write(&path, b"garbage").expect("write");
        assert!(read_midi_log(&path).is_err());
    }
}
