//! The Momento backend against the shared conformance suite, through
//! momento-local started in-process on an ephemeral port (the same server
//! `fxcast momento-local` runs), with Momento's own wire protocol between.

use fxcast_momento_local::{MomentoLocalConfig, serve};
use fxcast_transport::{
    conformance::Limits,
    momento::{MomentoConfig, MomentoTransport},
};
use tokio::net::TcpListener;

/// A momento-local server for this test and a transport connected to it;
/// the server stops with the test's runtime.
async fn connect(buffer: usize) -> MomentoTransport {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        MomentoLocalConfig::default(),
        std::future::pending(),
    ));
    MomentoTransport::connect(MomentoConfig {
        api_key: "conformance".into(),
        endpoint: Some(format!("http://{addr}")),
        buffer,
        ..MomentoConfig::default()
    })
    .await
    .expect("connect to momento-local")
}

fxcast_transport::transport_conformance!(momento_topics, {
    (connect(64).await, Limits { buffer: 64 })
});
