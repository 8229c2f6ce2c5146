//! Length-prefixed frames on a QUIC stream: a 4-byte big-endian length,
//! then that many bytes. The length is checked against the caller's limit
//! before anything is allocated.

use iroh::endpoint::{RecvStream, SendStream};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("connection: {0}")]
    Io(String),
}

pub async fn write(send: &mut SendStream, payload: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        limit: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    send.write_all(payload)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))
}

/// The next frame, or `None` when the peer finished the stream cleanly.
pub async fn read(recv: &mut RecvStream, limit: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if is_clean_end(&e) => return Ok(None),
        Err(e) => return Err(FrameError::Io(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(Some(buf))
}

fn is_clean_end(e: &iroh::endpoint::ReadExactError) -> bool {
    matches!(e, iroh::endpoint::ReadExactError::FinishedEarly(0))
}
