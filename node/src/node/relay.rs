//! `meshstudio relay`: the relay a community hosts on one machine every
//! site can reach (a small server, a school's public IP). Sites behind NAT
//! start their nodes with `up --relay URL`; the relay introduces them, helps
//! punch holes between them, and carries their (end-to-end encrypted) QUIC
//! packets when no direct path exists. It never sees project data in the
//! clear and stores nothing.
//!
//! This is the iroh-relay crate's server over plain HTTP: it carries only
//! ciphertext; put TLS in front of it if the network demands.

use std::net::SocketAddr;

use iroh_relay::server::{RelayConfig, Server, ServerConfig};

/// Runs the relay on `bind` until Ctrl-C or SIGTERM.
pub fn run(bind: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(bind))
}

async fn serve(bind: SocketAddr) -> Result<(), String> {
    // No QUIC address discovery and no metrics: one HTTP port to open.
    let mut config = ServerConfig::default();
    config.relay = Some(RelayConfig::new(bind));
    let mut server = Server::spawn(config)
        .await
        .map_err(|e| format!("cannot run the relay on {bind}: {e}"))?;
    let at = server
        .http_addr()
        .ok_or("the relay did not start its HTTP server")?;
    eprintln!("meshstudio: relay running; sites start their nodes with:");
    println!("meshstudio up --relay http://{at}");
    if at.ip().is_unspecified() {
        eprintln!(
            "(with this machine's address the sites can reach instead of {})",
            at.ip()
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        done = server.join() => {
            return Err(format!("the relay stopped: {done:?}"));
        }
    }
    server.shutdown().await.map_err(|e| e.to_string())?;
    eprintln!("meshstudio: relay stopped");
    Ok(())
}
