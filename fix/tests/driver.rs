//! The session driver over a real socket against a scripted acceptor that
//! misbehaves on purpose: garbled input, a wrong CompID, a sequence gap at
//! logon, a reconnect, a restart on the same store.

use std::time::Duration;

use fxcast_fix::{
    BackoffPolicy, Decoded, Decoder, FixSession, Message, Secret, SessionConfig, SessionEvent,
    encode,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

/// The acceptor's side of one connection.
struct Peer {
    stream: TcpStream,
    decoder: Decoder,
    seq: u64,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("fxcast connects")
            .unwrap();
        Self {
            stream,
            decoder: Decoder::new("FIX.4.4"),
            seq: 1,
        }
    }

    async fn read(&mut self) -> Message {
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(frame) = self.decoder.next_frame() {
                match frame {
                    Decoded::Message(m) => return m,
                    Decoded::Garbled { reason, .. } => panic!("fxcast sent garbage: {reason}"),
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buffer))
                .await
                .expect("fxcast writes")
                .unwrap();
            assert!(n > 0, "fxcast closed the connection");
            self.decoder.extend(&buffer[..n]);
        }
    }

    /// The next message that is not a Heartbeat.
    async fn read_non_heartbeat(&mut self) -> Message {
        loop {
            let m = self.read().await;
            if m.msg_type() != "0" {
                return m;
            }
        }
    }

    fn frame(&mut self, msg_type: &str, sender: &str, body: &[(u32, &str)]) -> Vec<u8> {
        let mut m = Message::new(msg_type)
            .with(49, sender)
            .with(56, "FXCAST")
            .with(34, self.seq)
            .with(52, "20261207-16:00:00.000");
        for (t, v) in body {
            m.push(*t, v);
        }
        self.seq += 1;
        encode("FIX.4.4", &m).unwrap()
    }

    async fn send(&mut self, msg_type: &str, body: &[(u32, &str)]) {
        let bytes = self.frame(msg_type, "LP", body);
        self.stream.write_all(&bytes).await.unwrap();
    }

    async fn closed(&mut self) {
        let mut buffer = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buffer))
                .await
                .expect("fxcast closes the connection")
            {
                Ok(0) | Err(_) => return,
                Ok(n) => self.decoder.extend(&buffer[..n]),
            }
        }
    }
}

async fn event(events: &mut broadcast::Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event")
        .unwrap()
}

fn config(port: u16, dir: &std::path::Path) -> SessionConfig {
    SessionConfig {
        heartbeat: Duration::from_secs(1),
        username: Some("user".into()),
        password: Some(Secret::new("pw")),
        reconnect: BackoffPolicy::new(Duration::from_millis(10), Duration::from_millis(100)),
        ..SessionConfig::new("127.0.0.1", port, "FXCAST", "LP", dir.to_owned())
    }
}

/// A scripted acceptor's listener on a free loopback port, and a session
/// (not yet started) of [`config`] that connects to it, its store in a
/// fresh directory, and a subscription to its events.
struct Acceptor {
    listener: TcpListener,
    port: u16,
    dir: tempfile::TempDir,
    session: FixSession,
    events: broadcast::Receiver<SessionEvent>,
}

impl Acceptor {
    async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let session = FixSession::new(config(port, dir.path())).unwrap();
        let events = session.subscribe();
        Self {
            listener,
            port,
            dir,
            session,
            events,
        }
    }
}

#[tokio::test]
async fn the_driver_survives_bad_input_reconnects_and_resumes_its_numbers() {
    let Acceptor {
        listener,
        port,
        dir,
        session,
        mut events,
    } = Acceptor::bind().await;
    assert!(matches!(
        session.send(Message::new("D")).await,
        Err(fxcast_fix::FixError::NotLoggedOn)
    ));
    session.start().unwrap();

    // Logon with the credentials.
    let mut peer = Peer::accept(&listener).await;
    let logon = peer.read().await;
    assert_eq!(logon.msg_type(), "A");
    assert_eq!((logon.get(553), logon.get(554)), (Some("user"), Some("pw")));
    assert_eq!((logon.get(34), logon.get(108)), (Some("1"), Some("1")));
    peer.send("A", &[(98, "0"), (108, "1")]).await;
    assert!(matches!(event(&mut events).await, SessionEvent::LoggedOn));

    // A message with a bad checksum is ignored (its number is not used);
    // the next good one is delivered.
    let mut bad = peer.frame("8", "LP", &[(11, "bad")]);
    peer.seq -= 1;
    let n = bad.len();
    bad[n - 2] = if bad[n - 2] == b'1' { b'2' } else { b'1' };
    peer.stream.write_all(&bad).await.unwrap();
    peer.stream.write_all(b"\x01junk=").await.unwrap();
    peer.send("8", &[(11, "good")]).await;
    match event(&mut events).await {
        SessionEvent::Message(m) => assert_eq!(m.get(11), Some("good")),
        other => panic!("{other:?}"),
    }
    assert!(session.status().borrow().garbled >= 1);
    let seq = session
        .send(Message::new("D").with(11, "k1"))
        .await
        .unwrap();
    assert_eq!(seq, 2);
    let d = peer.read_non_heartbeat().await;
    assert_eq!((d.msg_type(), d.get(11)), ("D", Some("k1")));

    // A wrong CompID: Reject (SessionRejectReason 9), Logout, disconnect.
    let wrong = peer.frame("8", "SOMEONE-ELSE", &[(11, "x")]);
    peer.stream.write_all(&wrong).await.unwrap();
    let reject = peer.read_non_heartbeat().await;
    assert_eq!((reject.msg_type(), reject.get(373)), ("3", Some("9")));
    let logout = peer.read_non_heartbeat().await;
    assert_eq!(logout.msg_type(), "5");
    assert!(logout.get(58).unwrap().contains("CompID"));
    peer.closed().await;
    match event(&mut events).await {
        SessionEvent::LoggedOut { reason } => assert!(reason.contains("CompID"), "{reason}"),
        other => panic!("{other:?}"),
    }

    // It reconnects with backoff, continuing its numbers; our Logon answer
    // skips ahead, so it asks for a resend, which we gap-fill.
    let mut peer2 = Peer::accept(&listener).await;
    peer2.seq = 10;
    let logon = peer2.read().await;
    let resumed: u64 = logon.get(34).unwrap().parse().unwrap();
    assert!(resumed >= 5, "{logon:?}");
    peer2.send("A", &[(98, "0"), (108, "1")]).await;
    assert!(matches!(event(&mut events).await, SessionEvent::LoggedOn));
    let resend = peer2.read_non_heartbeat().await;
    assert_eq!(resend.msg_type(), "2");
    assert_eq!((resend.get(7), resend.get(16)), (Some("3"), Some("0")));
    let fill = Message::new("4")
        .with(49, "LP")
        .with(56, "FXCAST")
        .with(34, 3)
        .with(43, "Y")
        .with(52, "20261207-16:00:00.000")
        .with(122, "20261207-16:00:00.000")
        .with(123, "Y")
        .with(36, 11);
    peer2
        .stream
        .write_all(&encode("FIX.4.4", &fill).unwrap())
        .await
        .unwrap();
    peer2.send("8", &[(11, "after-gap")]).await;
    match event(&mut events).await {
        SessionEvent::Message(m) => assert_eq!(m.get(11), Some("after-gap")),
        other => panic!("{other:?}"),
    }

    // Logout: ours, answered.
    let next = session
        .send(Message::new("D").with(11, "k2"))
        .await
        .unwrap();
    let stopping = {
        let session = session.clone();
        tokio::spawn(async move { session.logout(Duration::from_secs(5)).await })
    };
    loop {
        let m = peer2.read_non_heartbeat().await;
        if m.msg_type() == "5" {
            break;
        }
    }
    peer2.send("5", &[]).await;
    stopping.await.unwrap();
    assert!(session.status().borrow().stopped);

    // A new process on the same store continues after the last number.
    let again = FixSession::new(config(port, dir.path())).unwrap();
    again.start().unwrap();
    let mut peer3 = Peer::accept(&listener).await;
    let logon = peer3.read().await;
    let continued: u64 = logon.get(34).unwrap().parse().unwrap();
    assert!(
        continued >= next + 2,
        "{continued}: numbers continue after k2 and the Logout"
    );
    again.logout(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_counterparty_that_stops_reading_cannot_block_the_session() {
    let Acceptor {
        listener,
        port: _,
        // Kept to the end: the session's store.
        dir: _dir,
        session,
        mut events,
    } = Acceptor::bind().await;
    session.start().unwrap();
    let mut peer = Peer::accept(&listener).await;
    assert_eq!(peer.read().await.msg_type(), "A");
    peer.send("A", &[(98, "0"), (108, "1")]).await;
    assert!(matches!(event(&mut events).await, SessionEvent::LoggedOn));

    // The peer reads nothing more: big messages fill the socket buffers,
    // and a write that cannot complete within HeartBtInt (1 s) ends the
    // connection instead of blocking the session for ever.
    let big = "x".repeat(1 << 20);
    let started = std::time::Instant::now();
    let error = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the session is still writing"
        );
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            session.send(Message::new("B").with(148, &big)),
        )
        .await
        .expect("a send never hangs");
        if let Err(err) = sent {
            break err;
        }
    };
    assert!(error.to_string().contains("did not complete"), "{error}");
    match event(&mut events).await {
        SessionEvent::LoggedOut { reason } => assert!(reason.contains("did not complete")),
        other => panic!("{other:?}"),
    }
    drop(peer);
    session.logout(Duration::from_millis(100)).await;
}
