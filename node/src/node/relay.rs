//! `meshstudio relay`: the relay a community hosts on one machine every
//! site can reach (a small server, a school's public IP). Sites behind NAT
//! start their nodes with `up --relay URL`; the relay introduces them,
//! tells each node the address its NAT maps it to (QUIC address discovery)
//! so the two can punch a hole to each other, and carries their packets
//! when no direct path exists. Those packets are QUIC between nodes that
//! authenticate each other by key: the relay never sees project data in
//! the clear, and it stores nothing.
//!
//! This is the iroh-relay crate's server with a self-signed certificate
//! made at start: a relay is named by its IP address, which no public CA
//! certifies, and nodes accept any certificate from a relay named so
//! (`client_trust`) — what the relay could do by lying is what it can do
//! anyway: drop or delay ciphertext, or misreport a node's NAT address.

use std::net::SocketAddr;

use iroh_relay::server::{CertConfig, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig};

/// UDP port of the relay's QUIC address discovery: the port iroh nodes
/// assume for a relay URL.
pub const QAD_PORT: u16 = 7842;

/// Runs the relay with HTTPS on `bind` until Ctrl-C or SIGTERM.
pub fn run(bind: SocketAddr) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(bind))
}

async fn serve(bind: SocketAddr) -> Result<(), String> {
    let mut server = Server::spawn(config(bind)?)
        .await
        .map_err(|e| format!("cannot run the relay on {bind}: {e}"))?;
    let at = server
        .https_addr()
        .ok_or("the relay did not start its HTTPS server")?;
    eprintln!(
        "meshstudio: relay running (TCP {}, UDP {QAD_PORT} for address discovery); sites start their nodes with:",
        at.port()
    );
    println!("meshstudio up --relay https://{at}");
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

/// HTTPS (the relay itself) on `bind`; plain HTTP, which the server insists
/// on for captive-portal probes, on any free port; QUIC address discovery
/// on `QAD_PORT`, sharing the HTTPS certificate.
fn config(bind: SocketAddr) -> Result<ServerConfig, String> {
    let mut relay = RelayConfig::new(SocketAddr::new(bind.ip(), 0));
    relay.tls = Some(TlsConfig::new(
        bind,
        CertConfig::Manual {
            server_config: tls(bind)?,
        },
    ));
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    config.quic = Some(QuicConfig::new(SocketAddr::new(bind.ip(), QAD_PORT)));
    Ok(config)
}

/// A TLS config with a certificate made now for the relay's address.
fn tls(bind: SocketAddr) -> Result<rustls::ServerConfig, String> {
    let names = vec![bind.ip().to_string(), "localhost".to_string()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot make the relay's certificate: {e}"))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)
        .map_err(|e| format!("relay certificate: {e}"))
}

/// How a node checks its relay's certificate. A relay named by its IP
/// address (`meshstudio relay` on a community's server) has a self-signed
/// one, accepted as long as the handshake is signed by it: what a node
/// sends through a relay is QUIC between nodes that authenticate each other
/// by key. A relay named by a host name needs a certificate the usual roots
/// trust.
pub fn client_trust(url: Option<&iroh::RelayUrl>) -> iroh::tls::CaTlsConfig {
    let by_ip = url.is_some_and(|u| {
        u.host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok())
    });
    if !by_ip {
        return iroh::tls::CaTlsConfig::default();
    }
    iroh::tls::CaTlsConfig::custom_server_cert_verifier(std::sync::Arc::new(|provider| {
        Ok(std::sync::Arc::new(AnyCertificate { provider }) as _)
    }))
}

/// Accepts the relay's certificate whatever it is, but checks that the
/// handshake is signed with its key.
#[derive(Debug)]
struct AnyCertificate {
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
