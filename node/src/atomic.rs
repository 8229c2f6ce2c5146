//! Files appear whole or not at all: written to a temp file next to
//! the target, synced, then renamed over it. Dropping an `AtomicFile`
//! (error, Ctrl-C) deletes the temp file. And files are read with a
//! limit (`read_capped`), never whole whatever their size.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written to a temporary name in its final directory.
pub struct AtomicFile {
    temp: NamedTempFile,
    target: PathBuf,
}

impl AtomicFile {
    pub fn create(target: &Path) -> io::Result<Self> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::other("not a file name"))?;
        if target.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        // Like any new file: 0666 less the umask (tempfile's default is 0600).
        let temp = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempfile_in(dir)?;
        Ok(AtomicFile {
            temp,
            target: target.to_path_buf(),
        })
    }

    /// A buffered writer over the temp file that remembers whether a write failed.
    pub fn writer(&self) -> io::Result<TrackedWriter> {
        Ok(TrackedWriter {
            inner: BufWriter::new(self.temp.as_file().try_clone()?),
            failed: false,
        })
    }

    /// Flushes to disk and moves the file into place.
    pub fn commit(self) -> io::Result<()> {
        self.temp.as_file().sync_all()?;
        self.temp.persist(&self.target).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A `BufWriter<File>` whose I/O errors are flagged, so an error that comes
/// back through the codec can be blamed on the output, not the input.
pub struct TrackedWriter {
    inner: BufWriter<File>,
    failed: bool,
}

impl TrackedWriter {
    /// Whether any write, flush or seek has failed.
    pub fn failed(&self) -> bool {
        self.failed
    }

    fn track<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        self.failed |= r.is_err();
        r
    }
}

impl Write for TrackedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.track(r)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.track(r)
    }
}

impl Seek for TrackedWriter {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let r = self.inner.seek(pos);
        self.track(r)
    }
}

/// Reads all of `path`, refusing (`InvalidData`) a file over `max` bytes
/// without reading more than one byte past the limit.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(File::open(path)?, max + 1), &mut bytes)?;
    if bytes.len() as u64 > max {
        let why = format!("larger than {max} bytes");
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    Ok(bytes)
}
