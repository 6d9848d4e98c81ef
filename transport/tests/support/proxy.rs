//! A TCP proxy whose connections can be cut (and new ones refused) until
//! restored: a network failure between one fxcast process and the server,
//! while the others stay connected.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub(crate) struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Each generation's connections end when it is replaced.
    generation: Arc<Mutex<watch::Sender<u64>>>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            generation: Arc::new(Mutex::new(watch::channel(0).0)),
        };
        let open = Arc::clone(&proxy.open);
        let generation = Arc::clone(&proxy.generation);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !open.load(Ordering::SeqCst) {
                    continue;
                }
                let mut cut = generation.lock().unwrap().subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and refuses new ones.
    pub(crate) fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.lock().unwrap().send_modify(|g| *g += 1);
    }

    pub(crate) fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
