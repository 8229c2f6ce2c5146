//! How fast one iroh QUIC stream carries bytes between two processes on
//! loopback with the node's transport settings (`meshstudio_node::transport`)
//! and cubic (what the node's controller runs on a path this short): no
//! blob store, no hashing, no disk. `scripts/bench/blobs` prints it next to
//! the node-to-node transfer and curl, so what the transport costs and what
//! the node adds on top show apart.
//!
//!   quic_ceiling BYTES   starts `quic_ceiling serve` as a second process
//!                        (a node is a process of its own), fetches BYTES
//!                        from it and prints the rate

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use iroh::{Endpoint, EndpointAddr, EndpointId};

const ALPN: &[u8] = b"meshstudio/bench-stream/0";
/// One write: iroh-blobs sends a 16 KiB chunk group at a time.
const CHUNK: usize = 16 * 1024;
/// Worker threads per process, as in a node's runtime.
const WORKERS: usize = 2;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()?;
    match args.as_slice() {
        [role] if role == "serve" => runtime.block_on(serve()),
        [bytes] => {
            let bytes = bytes.parse().context("BYTES: a whole number of bytes")?;
            runtime.block_on(fetch(bytes))
        }
        _ => bail!("usage: quic_ceiling BYTES"),
    }
}

async fn endpoint(alpns: Vec<Vec<u8>>) -> anyhow::Result<Endpoint> {
    meshstudio_node::transport::loopback_endpoint(alpns)
        .await
        .map_err(anyhow::Error::msg)
}

/// Prints its id and address, then sends as many bytes as the one client
/// asks for (an 8-byte little-endian count) and waits for it to hang up.
async fn serve() -> anyhow::Result<()> {
    let ep = endpoint(vec![ALPN.to_vec()]).await?;
    let addr = ep.bound_sockets().first().copied().context("no socket")?;
    println!("{} {addr}", ep.id());
    let conn = ep.accept().await.context("endpoint closed")?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut count = [0; 8];
    recv.read_exact(&mut count).await?;
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let mut left = u64::from_le_bytes(count);
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_chunk(chunk.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    conn.closed().await;
    ep.close().await;
    Ok(())
}

async fn fetch(bytes: u64) -> anyhow::Result<()> {
    let mut server = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(stdout) = server.stdout.take() {
        BufReader::new(stdout).read_line(&mut line)?;
    }
    let outcome = receive(&line, bytes).await;
    if outcome.is_err() {
        // It would wait for a client forever.
        server.kill().ok();
    }
    server.wait()?;
    let secs = outcome?;
    println!(
        "{:.0} MB/s ({bytes} bytes in {secs:.2} s)",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}

/// Fetches `bytes` from the server that printed `line`; the seconds taken.
async fn receive(line: &str, bytes: u64) -> anyhow::Result<f64> {
    let (id, addr) = line
        .trim()
        .split_once(' ')
        .context("serve printed no address")?;
    let addr = EndpointAddr::new(id.parse::<EndpointId>()?).with_ip_addr(addr.parse()?);
    let ep = endpoint(Vec::new()).await?;
    let conn = ep.connect(addr, ALPN).await?;
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&bytes.to_le_bytes()).await?;
    send.finish()?;
    let mut got = 0;
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        got += chunk.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    conn.close(0u32.into(), b"done");
    ep.close().await;
    if got != bytes {
        bail!("the stream ended after {got} of {bytes} bytes");
    }
    Ok(secs)
}
