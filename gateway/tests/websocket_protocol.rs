//! RFC 6455 on the wire, with a raw-socket client: the Autobahn
//! testsuite's cases of sections 1-7 (framing, pings and pongs, reserved
//! bits, opcodes, fragmentation, UTF-8, close handling) driven against the
//! real gateway, plus the size limit, unmasked frames and the slow-consumer
//! close. docs/WEBSOCKET.md lists which case each test covers.
//!
//! Autobahn's cases assume an echo server; the gateway speaks JSON, so "the
//! message is echoed" becomes "the server answers it": a subscribe to an
//! unknown symbol is answered with an `unknown_symbol` error that quotes the
//! symbol, which echoes whatever text the frames carried.

use std::time::Duration;

use fxcast_gateway::{GatewayConfig, LagLimit, WsLimits};
use fxcast_testkit::Stack;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpSocket, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const NORMAL: u16 = 1000;
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_PAYLOAD: u16 = 1007;
const TOO_BIG: u16 = 1009;
const TRY_AGAIN: u16 = 1013;

/// Longest wait for anything the server is expected to do.
const PATIENCE: Duration = Duration::from_secs(10);

/// One frame as it goes on the wire, built field by field so a test can
/// break any rule.
#[derive(Clone, Copy)]
struct Wire<'a> {
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &'a [u8],
    masked: bool,
}

impl<'a> Wire<'a> {
    /// A final, masked frame: what a well-behaved client sends.
    fn new(opcode: u8, payload: &'a [u8]) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            payload,
            masked: true,
        }
    }

    fn fin(self, fin: bool) -> Self {
        Self { fin, ..self }
    }

    fn rsv(self, rsv: u8) -> Self {
        Self { rsv, ..self }
    }

    fn unmasked(self) -> Self {
        Self {
            masked: false,
            ..self
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if self.masked {
            // Fixed, and without a zero byte: a server that ignored the
            // mask would read garbage.
            let mask = [0x37, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&mask);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4]),
            );
        } else {
            out.extend_from_slice(self.payload);
        }
        out
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    Wire::new(opcode, payload).bytes()
}

/// A close frame's payload: the code, then the reason's bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A subscribe to `symbol`, which the server answers by quoting it.
fn subscribe_to(symbol: &[u8]) -> Vec<u8> {
    [
        &br#"{"type":"subscribe","symbols":[""#[..],
        symbol,
        &br#""]}"#[..],
    ]
    .concat()
}

/// A subscribe exactly `len` bytes long (an unknown symbol of stars).
fn text_of_len(len: usize) -> Vec<u8> {
    let overhead = subscribe_to(b"").len();
    subscribe_to(&vec![b'*'; len - overhead])
}

/// What the server says about a subscribe to `symbol`.
/// The error an unknown `symbol` gets: the symbol quoted whole up to 64
/// bytes, else its first 64 bytes and its length, so a message of any size
/// is seen to have arrived whole (its length) and in order (its prefix).
fn unknown(symbol: &str) -> String {
    let quoted = if symbol.len() <= 64 {
        format!("{symbol:?}")
    } else {
        format!("{:?}... ({} bytes)", &symbol[..64], symbol.len())
    };
    format!("unknown symbol {quoted} (known: EUR_USD, USD_JPY)")
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn json(&self) -> Value {
        assert_eq!(self.opcode, TEXT, "expected a text frame, got {self:?}");
        serde_json::from_slice(&self.payload).unwrap()
    }

    /// The code and reason of a close frame.
    fn close(&self) -> (u16, String) {
        assert_eq!(self.opcode, CLOSE, "expected a close frame, got {self:?}");
        assert!(self.payload.len() >= 2, "close without a code: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).unwrap();
        (code, reason)
    }
}

/// What reading the socket yields.
#[derive(Debug, PartialEq)]
enum Event {
    Frame(Frame),
    /// The server closed the TCP connection (FIN or reset) at a frame
    /// boundary.
    Closed,
}

/// The reading side: frames parsed from the byte stream by hand.
struct Reader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Reader {
    /// A complete frame from the buffer, if there is one.
    fn parse(&mut self) -> Option<Frame> {
        let buf = &self.buf;
        if buf.len() < 2 {
            return None;
        }
        assert_eq!(buf[0] & 0x70, 0, "the server set RSV bits: {buf:x?}");
        assert_eq!(buf[1] & 0x80, 0, "the server masked a frame: {buf:x?}");
        let (len, header) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            len => (usize::from(len), 2),
        };
        if buf.len() < header + len {
            return None;
        }
        let frame = Frame {
            fin: buf[0] & 0x80 != 0,
            opcode: buf[0] & 0x0f,
            payload: buf[header..header + len].to_vec(),
        };
        self.buf.drain(..header + len);
        Some(frame)
    }

    /// The next frame, or the end of the connection; panics when the
    /// connection ends mid-frame or nothing comes within [`PATIENCE`].
    async fn next(&mut self) -> Event {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(frame) = self.parse() {
                    return Event::Frame(frame);
                }
                let mut chunk = [0u8; 8192];
                match self.half.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        assert!(
                            self.buf.is_empty(),
                            "the connection ended mid-frame: {} bytes left, starting {:x?}",
                            self.buf.len(),
                            &self.buf[..self.buf.len().min(16)]
                        );
                        return Event::Closed;
                    }
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the server sent nothing and kept the connection open")
    }

    async fn frame(&mut self) -> Frame {
        match self.next().await {
            Event::Frame(frame) => frame,
            Event::Closed => panic!("the server closed the connection without a close frame"),
        }
    }
}

/// A WebSocket client on a raw TCP socket.
struct Raw {
    reader: Reader,
    writer: OwnedWriteHalf,
}

impl Raw {
    /// Upgrades `socket`; panics unless it gets a 101.
    async fn upgrade(gateway: &Gateway, socket: TcpStream) -> Self {
        // Each write its own segment, so chopped frames arrive chopped.
        socket.set_nodelay(true).unwrap();
        let (h, token) = (&gateway.h, &gateway.token);
        let (half, mut writer) = socket.into_split();
        let request = format!(
            "GET /v1/stream?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            h.http
        );
        writer.write_all(request.as_bytes()).await.unwrap();
        let mut reader = Reader {
            half,
            buf: Vec::new(),
        };
        let head = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(end) = reader.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(reader.buf[..end].to_vec()).unwrap();
                    reader.buf.drain(..end + 4);
                    return head;
                }
                let mut chunk = [0u8; 1024];
                let n = reader.half.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed during the handshake");
                reader.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The accept value RFC 6455 section 1.3 gives for this key.
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        Self { reader, writer }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends `bytes` in writes of `chop` octets.
    async fn send_chopped(&mut self, bytes: &[u8], chop: usize) {
        for chunk in bytes.chunks(chop) {
            self.send(chunk).await;
            self.writer.flush().await.unwrap();
        }
    }

    async fn frame(&mut self) -> Frame {
        self.reader.frame().await
    }

    /// The next frame, which must be a JSON text message.
    async fn json(&mut self) -> Value {
        let frame = self.frame().await;
        assert!(frame.fin, "{frame:?}");
        frame.json()
    }

    /// The next frame must be a pong carrying `payload`.
    async fn pong(&mut self, payload: &[u8]) {
        let frame = self.frame().await;
        assert_eq!(
            (frame.opcode, frame.payload.as_slice()),
            (PONG, payload),
            "{frame:?}"
        );
    }

    /// The next frame must answer a subscribe to `symbol`.
    async fn echo(&mut self, symbol: &str) {
        let reply = self.json().await;
        assert_eq!(reply["code"], "unknown_symbol", "{reply}");
        assert_eq!(reply["message"], unknown(symbol), "{reply}");
    }

    /// The next frame must be an `error` message with `code`.
    async fn error(&mut self, code: &str) -> Value {
        let reply = self.json().await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{reply}"
        );
        reply
    }

    /// Sends an application ping and expects its heartbeat as the very next
    /// frame: nothing else was sent before it, and the connection is open.
    async fn barrier(&mut self) {
        self.send(&frame(TEXT, br#"{"type":"ping"}"#)).await;
        let reply = self.json().await;
        assert_eq!(reply["type"], "heartbeat", "{reply}");
    }

    /// The next frame must be a close with `code`; the client answers it
    /// and the server then closes the TCP connection. Returns the reason.
    async fn closed_with(&mut self, code: u16) -> String {
        let frame = self.frame().await;
        let (got, reason) = frame.close();
        assert_eq!(got, code, "closed with {got} {reason:?}, expected {code}");
        // The server may have closed the socket already.
        let _ = self.writer.write_all(&close_frame(got)).await;
        self.tcp_closed().await;
        reason
    }

    /// Nothing more comes, and the server closes the TCP connection.
    async fn tcp_closed(&mut self) {
        assert_eq!(self.reader.next().await, Event::Closed);
    }

    /// Sends close `code` and expects it echoed, then the end of the
    /// connection: the closing handshake a browser starts.
    async fn close(&mut self, code: u16) {
        self.send(&close_frame(code)).await;
        let frame = self.frame().await;
        assert_eq!(
            frame.close().0,
            code,
            "the client's close {code} was not echoed: {frame:?}"
        );
        self.tcp_closed().await;
    }
}

fn close_frame(code: u16) -> Vec<u8> {
    frame(CLOSE, &close_payload(code, b""))
}

/// The desk stack and one browser token for all its connections (browser
/// tokens are rate-limited per address).
struct Gateway {
    h: Stack,
    token: String,
}

impl Gateway {
    async fn start() -> Self {
        Self::with(Stack::desk().await).await
    }

    async fn with(h: Stack) -> Self {
        let token = h.browser_token().await;
        Self { h, token }
    }

    /// A new WebSocket.
    async fn ws(&self) -> Raw {
        Raw::upgrade(self, TcpStream::connect(self.h.http).await.unwrap()).await
    }
}

/// How a case's frames are written to the socket (Autobahn's chops).
#[derive(Debug, Clone, Copy)]
enum Chops {
    /// All frames in one write.
    Whole,
    /// One write per frame.
    Frames,
    /// One write per octet.
    Octets,
}

const CHOPS: [Chops; 3] = [Chops::Whole, Chops::Frames, Chops::Octets];

impl Raw {
    async fn send_frames(&mut self, frames: &[Vec<u8>], chops: Chops) {
        match chops {
            Chops::Whole => self.send(&frames.concat()).await,
            Chops::Frames => {
                for frame in frames {
                    self.send_chopped(frame, frame.len()).await;
                }
            }
            Chops::Octets => self.send_chopped(&frames.concat(), 1).await,
        }
    }
}

impl Gateway {
    /// Sends `frames` on a new connection and expects it failed with
    /// `code`: the close frame is the first thing the server sends.
    async fn fails(&self, case: &str, frames: &[Vec<u8>], chops: Chops, code: u16) -> String {
        eprintln!("case {case} ({chops:?})");
        let mut ws = self.ws().await;
        ws.send_frames(frames, chops).await;
        ws.closed_with(code).await
    }

    /// Autobahn's "a text message, then `bad`, then a ping": the message is
    /// answered, `bad` fails the connection with 1002 and the ping after it
    /// gets no pong.
    async fn fails_after_a_message(&self, case: &str, bad: Vec<u8>, chops: Chops) {
        eprintln!("case {case} ({chops:?})");
        let mut ws = self.ws().await;
        let frames = [
            frame(TEXT, &subscribe_to(b"Hello, world!")),
            bad,
            frame(PING, b""),
        ];
        ws.send_frames(&frames, chops).await;
        ws.echo("Hello, world!").await;
        ws.closed_with(PROTOCOL_ERROR).await;
    }
}

impl Raw {
    /// Sends `bytes` (over the size limit) while reading: the server says
    /// why in an `error` message, then closes with 1009, whether or not it
    /// read the whole message.
    async fn refused_as_too_big(&mut self, bytes: &[u8], chop: usize) {
        let Raw { reader, writer } = self;
        let write = async {
            for chunk in bytes.chunks(chop) {
                // The server stops reading, and may reset the connection.
                if writer.write_all(chunk).await.is_err() {
                    return;
                }
            }
        };
        let read = async {
            let error = reader.frame().await.json();
            assert_eq!(error["code"], "message_too_big", "{error}");
            let (code, reason) = reader.frame().await.close();
            assert_eq!(
                (code, reason.as_str()),
                (TOO_BIG, "message too big: at most 4096 bytes")
            );
            assert_eq!(reader.next().await, Event::Closed);
        };
        tokio::join!(write, read);
    }
}

// Section 1: framing.

#[tokio::test]
async fn s1_text_and_binary_messages_of_each_length_encoding_are_answered() {
    let g = Gateway::start().await;
    let mut ws = g.ws().await;
    // 1.1.1: an empty text message; not JSON, so answered with an error.
    ws.send(&frame(TEXT, b"")).await;
    ws.error("invalid_message").await;
    // 1.1.2-1.1.5: 125 (7-bit length), 126, 127 and 128 (16-bit length).
    for len in [125, 126, 127, 128] {
        ws.send(&frame(TEXT, &text_of_len(len))).await;
        ws.echo(&"*".repeat(len - subscribe_to(b"").len())).await;
    }
    // 1.2.1-1.2.5: binary messages are refused with an error, not a close.
    for len in [0, 125, 126, 127, 128] {
        ws.send(&frame(BINARY, &vec![0xfe; len])).await;
        ws.error("invalid_message").await;
    }
    ws.close(NORMAL).await;
}

#[tokio::test]
async fn s1_messages_over_the_size_limit_are_closed_with_1009() {
    let g = Gateway::start().await;
    // 1.1.6-1.1.8 and 1.2.6-1.2.8 (65535 and 65536 octets, the last in
    // chops of 997), a message over the 4096-byte limit that is still read
    // whole (5000) and a 1 MB frame (64-bit length).
    for (opcode, len, chop) in [
        (TEXT, 5000, usize::MAX),
        (TEXT, 65_535, usize::MAX),
        (TEXT, 65_536, usize::MAX),
        (TEXT, 65_536, 997),
        (BINARY, 65_535, usize::MAX),
        (BINARY, 65_536, usize::MAX),
        (BINARY, 65_536, 997),
        (TEXT, 1 << 20, usize::MAX),
    ] {
        eprintln!("opcode {opcode}, {len} octets in chops of {chop}");
        let mut ws = g.ws().await;
        ws.refused_as_too_big(&frame(opcode, &vec![b'*'; len]), chop)
            .await;
    }
}

#[tokio::test]
async fn an_unmasked_client_frame_fails_the_connection_with_1002() {
    let g = Gateway::start().await;
    let reason = g
        .fails(
            "RFC 6455 5.1",
            &[Wire::new(TEXT, br#"{"type":"ping"}"#).unmasked().bytes()],
            Chops::Whole,
            PROTOCOL_ERROR,
        )
        .await;
    assert!(reason.contains("unmasked"), "{reason}");
}

// Section 2: pings and pongs.

#[tokio::test]
async fn s2_pings_are_answered_with_their_payload_and_pongs_ignored() {
    let g = Gateway::start().await;
    let mut ws = g.ws().await;
    // 2.1-2.4: empty, text, binary and 125-octet payloads.
    let binary = b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff";
    for payload in [&b""[..], b"Hello, world!", binary, &[0xfe; 125]] {
        ws.send(&frame(PING, payload)).await;
        ws.pong(payload).await;
    }
    // 2.6: 125 octets sent octet by octet.
    ws.send_chopped(&frame(PING, &[0xfe; 125]), 1).await;
    ws.pong(&[0xfe; 125]).await;
    // 2.7, 2.8: unsolicited pongs are not answered.
    ws.send(&frame(PONG, b"")).await;
    ws.barrier().await;
    ws.send(&frame(PONG, b"unsolicited pong payload")).await;
    ws.barrier().await;
    // 2.9: an unsolicited pong, then a ping: one pong, for the ping.
    ws.send(
        &[
            frame(PONG, b"unsolicited pong payload"),
            frame(PING, b"ping payload"),
        ]
        .concat(),
    )
    .await;
    ws.pong(b"ping payload").await;
    ws.barrier().await;
    // 2.10, 2.11: ten pings, at once and octet by octet: ten pongs in order.
    for chop in [usize::MAX, 1] {
        let pings: Vec<u8> = (0..10)
            .flat_map(|i| frame(PING, format!("payload-{i}").as_bytes()))
            .collect();
        ws.send_chopped(&pings, chop).await;
        for i in 0..10 {
            ws.pong(format!("payload-{i}").as_bytes()).await;
        }
    }
    ws.barrier().await;
    ws.close(NORMAL).await;
}

#[tokio::test]
async fn s2_a_ping_over_125_octets_fails_the_connection_with_1002() {
    let g = Gateway::start().await;
    // 2.5
    g.fails(
        "2.5",
        &[frame(PING, &[0xfe; 126])],
        Chops::Whole,
        PROTOCOL_ERROR,
    )
    .await;
}

// Section 3: reserved bits.

#[tokio::test]
async fn s3_reserved_bits_fail_the_connection_with_1002() {
    let g = Gateway::start().await;
    let hello = b"Hello, world!";
    let reason = g
        .fails(
            "3.1",
            &[Wire::new(TEXT, hello).rsv(1).bytes()],
            Chops::Whole,
            PROTOCOL_ERROR,
        )
        .await;
    assert!(reason.contains("Reserved bits"), "{reason}");
    // 3.2-3.4: after a message that is answered, with each chopping.
    for (case, rsv, chops) in [
        ("3.2", 2, Chops::Whole),
        ("3.3", 3, Chops::Frames),
        ("3.4", 4, Chops::Octets),
    ] {
        g.fails_after_a_message(case, Wire::new(TEXT, hello).rsv(rsv).bytes(), chops)
            .await;
    }
    // 3.5-3.7: a binary message, a ping and a close.
    let binary = b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff";
    for (case, bad) in [
        ("3.5", Wire::new(BINARY, binary).rsv(5)),
        ("3.6", Wire::new(PING, hello).rsv(6)),
        ("3.7", Wire::new(CLOSE, b"").rsv(7)),
    ] {
        g.fails(case, &[bad.bytes()], Chops::Whole, PROTOCOL_ERROR)
            .await;
    }
}

// Section 4: opcodes.

#[tokio::test]
async fn s4_reserved_opcodes_fail_the_connection_with_1002() {
    let g = Gateway::start().await;
    let payload = b"reserved opcode payload";
    // 4.1.1, 4.1.2 (non-control 3, 4) and 4.2.1, 4.2.2 (control 11, 12).
    for (case, opcode, payload) in [
        ("4.1.1", 3, &b""[..]),
        ("4.1.2", 4, payload),
        ("4.2.1", 11, b""),
        ("4.2.2", 12, payload),
    ] {
        g.fails(
            case,
            &[frame(opcode, payload)],
            Chops::Whole,
            PROTOCOL_ERROR,
        )
        .await;
    }
    // 4.1.3-4.1.5 (5, 6, 7) and 4.2.3-4.2.5 (13, 14, 15): after a message
    // that is answered; the last of each octet by octet.
    let hello = b"Hello, world!";
    for (case, opcode, payload, chops) in [
        ("4.1.3", 5, &b""[..], Chops::Whole),
        ("4.1.4", 6, hello, Chops::Whole),
        ("4.1.5", 7, hello, Chops::Octets),
        ("4.2.3", 13, b"", Chops::Whole),
        ("4.2.4", 14, hello, Chops::Whole),
        ("4.2.5", 15, hello, Chops::Octets),
    ] {
        g.fails_after_a_message(case, frame(opcode, payload), chops)
            .await;
    }
}

// Section 5: fragmentation.

/// A subscribe to `symbol` split into text fragments after each of `cuts`
/// (offsets into `symbol`).
fn fragments(symbol: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let message = subscribe_to(symbol);
    let offset = subscribe_to(b"").len() - 3;
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().map(|cut| offset + cut));
    bounds.push(message.len());
    let last = bounds.len() - 2;
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let opcode = if i == 0 { TEXT } else { CONTINUATION };
            Wire::new(opcode, &message[w[0]..w[1]])
                .fin(i == last)
                .bytes()
        })
        .collect()
}

#[tokio::test]
async fn s5_fragmented_messages_are_reassembled_around_pings() {
    let g = Gateway::start().await;
    let mut ws = g.ws().await;
    // 5.3-5.5: two fragments, each chopping.
    for chops in CHOPS {
        ws.send_frames(&fragments(b"fragment1fragment2", &[9]), chops)
            .await;
        ws.echo("fragment1fragment2").await;
    }
    // 5.6-5.8: a ping between the fragments is answered first.
    for chops in CHOPS {
        let mut frames = fragments(b"fragment1fragment2", &[9]);
        frames.insert(1, frame(PING, b"ping payload"));
        ws.send_frames(&frames, chops).await;
        ws.pong(b"ping payload").await;
        ws.echo("fragment1fragment2").await;
    }
    // 5.19, 5.20: five fragments, a ping after the second answered while
    // the message is still incomplete, another before the last.
    let symbol = b"fragment1fragment2fragment3fragment4fragment5";
    for chops in [Chops::Whole, Chops::Frames] {
        let frames = fragments(symbol, &[9, 18, 27, 36]);
        ws.send_frames(
            &[
                frames[0].clone(),
                frames[1].clone(),
                frame(PING, b"pongme 1!"),
            ],
            chops,
        )
        .await;
        ws.pong(b"pongme 1!").await;
        let rest = [
            frames[2].clone(),
            frames[3].clone(),
            frame(PING, b"pongme 2!"),
            frames[4].clone(),
        ];
        ws.send_frames(&rest, chops).await;
        ws.pong(b"pongme 2!").await;
        ws.echo(std::str::from_utf8(symbol).unwrap()).await;
    }
    ws.close(NORMAL).await;
}

#[tokio::test]
async fn s5_broken_fragmentation_fails_the_connection_with_1002() {
    let g = Gateway::start().await;
    // 5.1, 5.2: fragmented control frames.
    for (case, opcode) in [("5.1", PING), ("5.2", PONG)] {
        let frames = [
            Wire::new(opcode, b"fragment1").fin(false).bytes(),
            frame(CONTINUATION, b"fragment2"),
        ];
        g.fails(case, &frames, Chops::Whole, PROTOCOL_ERROR).await;
    }
    // 5.9-5.14: a continuation with nothing to continue (FIN set, then
    // clear), then a message, each chopping.
    for (first, fin) in [(9, true), (12, false)] {
        for (i, chops) in CHOPS.into_iter().enumerate() {
            let frames = [
                Wire::new(CONTINUATION, b"non-continuation payload")
                    .fin(fin)
                    .bytes(),
                frame(TEXT, &subscribe_to(b"Hello, world!")),
            ];
            g.fails(&format!("5.{}", first + i), &frames, chops, PROTOCOL_ERROR)
                .await;
        }
    }
    // 5.15: a fragmented message (answered), then a continuation with
    // nothing to continue.
    eprintln!("case 5.15");
    let mut ws = g.ws().await;
    let mut frames = fragments(b"fragment1fragment2", &[9]);
    frames.push(Wire::new(CONTINUATION, b"fragment3").fin(false).bytes());
    frames.push(frame(TEXT, b"fragment4"));
    ws.send_frames(&frames, Chops::Whole).await;
    ws.echo("fragment1fragment2").await;
    ws.closed_with(PROTOCOL_ERROR).await;
    // 5.16, 5.17: twice, a continuation with nothing to continue, then a
    // fragmented message.
    for (case, fin) in [("5.16", false), ("5.17", true)] {
        let round = [
            Wire::new(CONTINUATION, b"fragment1").fin(fin).bytes(),
            Wire::new(TEXT, b"fragment2").fin(false).bytes(),
            frame(CONTINUATION, b"fragment3"),
        ];
        g.fails(
            case,
            &[round.clone(), round].concat(),
            Chops::Whole,
            PROTOCOL_ERROR,
        )
        .await;
    }
    // 5.18: a second text frame where a continuation was due.
    let frames = [
        Wire::new(TEXT, b"fragment1").fin(false).bytes(),
        frame(TEXT, b"fragment2"),
    ];
    g.fails("5.18", &frames, Chops::Whole, PROTOCOL_ERROR).await;
}

// Section 6: UTF-8 handling.

/// κόσμε, the valid string Autobahn builds its cases from.
const KOSME: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";

/// Payloads, each with whether it is valid UTF-8.
type Sequences = Vec<(bool, Vec<u8>)>;

/// Cases 6.5-6.23 in Autobahn's order (the sequences of Markus Kuhn's
/// UTF-8 decoder test): whether each payload is valid UTF-8, and the payload.
fn utf8_sequences() -> Vec<(&'static str, Sequences)> {
    let valid = |list: &[&[u8]]| -> Sequences { list.iter().map(|s| (true, s.to_vec())).collect() };
    let invalid =
        |list: &[&[u8]]| -> Sequences { list.iter().map(|s| (false, s.to_vec())).collect() };
    // 6.6: every prefix of κόσμε; valid where a code point ends.
    let prefixes = (1..=KOSME.len())
        .map(|i| ([2, 5, 7, 9, 11].contains(&i), KOSME[..i].to_vec()))
        .collect();
    // 6.12.8: every continuation byte but the last, in a row.
    let continuations: Vec<u8> = (0x80..0xbf).collect();
    // 6.13: each start byte of a range followed by a space.
    let lonely = [
        (0xc0, 0xdf),
        (0xe0, 0xef),
        (0xf0, 0xf7),
        (0xf8, 0xfb),
        (0xfc, 0xfd),
    ]
    .into_iter()
    .map(|(from, to)| (false, (from..to).flat_map(|b| [b, 0x20]).collect()))
    .collect();
    let missing: [&[u8]; 10] = [
        b"\xc0",
        b"\xe0\x80",
        b"\xf0\x80\x80",
        b"\xf8\x80\x80\x80",
        b"\xfc\x80\x80\x80\x80",
        b"\xdf",
        b"\xef\xbf",
        b"\xf7\xbf\xbf",
        b"\xfb\xbf\xbf\xbf",
        b"\xfd\xbf\xbf\xbf\xbf",
    ];
    // 6.22: non-characters, which are valid UTF-8.
    let mut nonchars = valid(&[b"\xef\xbf\xbe", b"\xef\xbf\xbf"]);
    for z1 in [0xf0u8, 0xf1, 0xf2, 0xf3, 0xf4] {
        for z2 in [0x8fu8, 0x9f, 0xaf, 0xbf] {
            // Beyond U+10FFFF, or overlong.
            if (z1 == 0xf4 && z2 != 0x8f) || (z1 == 0xf0 && z2 == 0x8f) {
                continue;
            }
            for z3 in [0xbeu8, 0xbf] {
                nonchars.push((true, vec![z1, z2, 0xbf, z3]));
            }
        }
    }
    vec![
        (
            "6.5",
            valid(&[
                b"hello\x24world",
                b"hello\xc2\xa2world",
                b"hello\xe2\x82\xacworld",
                b"hello\xf0\xa4\xad\xa2world",
                KOSME,
            ]),
        ),
        ("6.6", prefixes),
        (
            "6.7",
            valid(&[b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"]),
        ),
        (
            "6.8",
            invalid(&[b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"]),
        ),
        (
            "6.9",
            valid(&[b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"]),
        ),
        (
            "6.10",
            invalid(&[
                b"\xf7\xbf\xbf\xbf",
                b"\xfb\xbf\xbf\xbf\xbf",
                b"\xfd\xbf\xbf\xbf\xbf\xbf",
            ]),
        ),
        (
            "6.11",
            [
                valid(&[
                    b"\xed\x9f\xbf",
                    b"\xee\x80\x80",
                    b"\xef\xbf\xbd",
                    b"\xf4\x8f\xbf\xbf",
                ]),
                invalid(&[b"\xf4\x90\x80\x80"]),
            ]
            .concat(),
        ),
        (
            "6.12",
            invalid(&[
                b"\x80",
                b"\xbf",
                b"\x80\xbf",
                b"\x80\xbf\x80",
                b"\x80\xbf\x80\xbf",
                b"\x80\xbf\x80\xbf\x80",
                b"\x80\xbf\x80\xbf\x80\xbf",
                &continuations,
            ]),
        ),
        ("6.13", lonely),
        ("6.14", invalid(&missing)),
        ("6.15", invalid(&[&missing.concat()])),
        ("6.16", invalid(&[b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"])),
        (
            "6.17",
            invalid(&[
                b"\xc0\xaf",
                b"\xe0\x80\xaf",
                b"\xf0\x80\x80\xaf",
                b"\xf8\x80\x80\x80\xaf",
                b"\xfc\x80\x80\x80\x80\xaf",
            ]),
        ),
        (
            "6.18",
            invalid(&[
                b"\xc1\xbf",
                b"\xe0\x9f\xbf",
                b"\xf0\x8f\xbf\xbf",
                b"\xf8\x87\xbf\xbf\xbf",
                b"\xfc\x83\xbf\xbf\xbf\xbf",
            ]),
        ),
        (
            "6.19",
            invalid(&[
                b"\xc0\x80",
                b"\xe0\x80\x80",
                b"\xf0\x80\x80\x80",
                b"\xf8\x80\x80\x80\x80",
                b"\xfc\x80\x80\x80\x80\x80",
            ]),
        ),
        (
            "6.20",
            invalid(&[
                b"\xed\xa0\x80",
                b"\xed\xad\xbf",
                b"\xed\xae\x80",
                b"\xed\xaf\xbf",
                b"\xed\xb0\x80",
                b"\xed\xbe\x80",
                b"\xed\xbf\xbf",
            ]),
        ),
        (
            "6.21",
            invalid(&[
                b"\xed\xa0\x80\xed\xb0\x80",
                b"\xed\xa0\x80\xed\xbf\xbf",
                b"\xed\xad\xbf\xed\xb0\x80",
                b"\xed\xad\xbf\xed\xbf\xbf",
                b"\xed\xae\x80\xed\xb0\x80",
                b"\xed\xae\x80\xed\xbf\xbf",
                b"\xed\xaf\xbf\xed\xb0\x80",
                b"\xed\xaf\xbf\xed\xbf\xbf",
            ]),
        ),
        ("6.22", nonchars),
        (
            "6.23",
            valid(&[
                b"\xef\xbf\xb9",
                b"\xef\xbf\xba",
                b"\xef\xbf\xbb",
                b"\xef\xbf\xbc",
                b"\xef\xbf\xbd",
                b"\xef\xbf\xbe",
                b"\xef\xbf\xbf",
            ]),
        ),
    ]
}

#[tokio::test]
async fn s6_valid_utf8_is_answered_and_invalid_utf8_fails_with_1007() {
    let g = Gateway::start().await;
    let mut ws = g.ws().await;
    let mut counted = (0, 0);
    for (section, sequences) in utf8_sequences() {
        for (i, (valid, payload)) in sequences.into_iter().enumerate() {
            let case = format!("{section}.{}", i + 1);
            if !valid {
                counted.1 += 1;
                g.fails(
                    &case,
                    &[frame(TEXT, &payload)],
                    Chops::Whole,
                    INVALID_PAYLOAD,
                )
                .await;
                continue;
            }
            counted.0 += 1;
            eprintln!("case {case}");
            // Not JSON, so refused with an error: but read as text.
            ws.send(&frame(TEXT, &payload)).await;
            ws.error("invalid_message").await;
            // Inside a JSON string (control characters escaped), it comes
            // back exactly.
            let symbol = std::str::from_utf8(&payload).unwrap();
            let quoted = serde_json::to_string(symbol).unwrap();
            ws.send(&frame(
                TEXT,
                &subscribe_to(&quoted.as_bytes()[1..quoted.len() - 1]),
            ))
            .await;
            ws.echo(symbol).await;
        }
    }
    // As many as Autobahn has.
    assert_eq!(counted, (63, 69));
    ws.close(NORMAL).await;
}

#[tokio::test]
async fn s6_fragmented_and_empty_text_messages() {
    let g = Gateway::start().await;
    let mut ws = g.ws().await;
    // 6.1.1, 6.1.2: empty, and three empty fragments (not JSON: an error).
    let empty_fragments = [
        Wire::new(TEXT, b"").fin(false).bytes(),
        Wire::new(CONTINUATION, b"").fin(false).bytes(),
        frame(CONTINUATION, b""),
    ];
    for empty in [frame(TEXT, b""), empty_fragments.concat()] {
        ws.send(&empty).await;
        ws.error("invalid_message").await;
    }
    // 6.1.3: empty first and last fragments around the message.
    let middle = subscribe_to(b"middle frame payload");
    let frames = [
        Wire::new(TEXT, b"").fin(false).bytes(),
        Wire::new(CONTINUATION, &middle).fin(false).bytes(),
        frame(CONTINUATION, b""),
    ];
    ws.send(&frames.concat()).await;
    ws.echo("middle frame payload").await;
    // 6.2.1: valid UTF-8 in one frame; 6.2.2: in two fragments split at a
    // code point; 6.2.3, 6.2.4: in one-octet fragments, split inside code
    // points.
    let hello = "Hello-µ@ßöäüàá-UTF-8!!";
    ws.send(&frame(TEXT, &subscribe_to(hello.as_bytes()))).await;
    ws.echo(hello).await;
    let cut = "Hello-µ@ßöä".len();
    ws.send(&fragments(hello.as_bytes(), &[cut]).concat()).await;
    ws.echo(hello).await;
    for symbol in [hello.as_bytes(), KOSME] {
        let message = subscribe_to(symbol);
        ws.send(&octet_fragments(&message).concat()).await;
        ws.echo(std::str::from_utf8(symbol).unwrap()).await;
    }
    ws.close(NORMAL).await;
}

/// `message` as a text message of one-octet fragments.
fn octet_fragments(message: &[u8]) -> Vec<Vec<u8>> {
    let last = message.len() - 1;
    (0..message.len())
        .map(|i| {
            let opcode = if i == 0 { TEXT } else { CONTINUATION };
            Wire::new(opcode, &message[i..=i]).fin(i == last).bytes()
        })
        .collect()
}

/// κόσμε, a UTF-16 surrogate (invalid), then "edited": 6.3.x.
const WITH_SURROGATE: &[u8] =
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64";

/// κόσμε, a code point beyond U+10FFFF (invalid at its second octet, the
/// 12th), then "edited": 6.4.x.
const BEYOND_UNICODE: &[u8] =
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64";

#[tokio::test]
async fn s6_invalid_utf8_fails_fast_with_1007() {
    let g = Gateway::start().await;
    // 6.3.1, 6.3.2: in one frame and in one-octet fragments.
    g.fails(
        "6.3.1",
        &[frame(TEXT, WITH_SURROGATE)],
        Chops::Whole,
        INVALID_PAYLOAD,
    )
    .await;
    g.fails(
        "6.3.2",
        &octet_fragments(WITH_SURROGATE),
        Chops::Whole,
        INVALID_PAYLOAD,
    )
    .await;
    // 6.4.1, 6.4.2: the first fragment is accepted (a ping after it is
    // answered), the fragment that makes the text invalid fails the
    // connection at once, before the rest is sent.
    for (case, cuts) in [("6.4.1", [11, 15]), ("6.4.2", [12, 13])] {
        eprintln!("case {case}");
        let mut ws = g.ws().await;
        let parts = [
            &BEYOND_UNICODE[..cuts[0]],
            &BEYOND_UNICODE[cuts[0]..cuts[1]],
            &BEYOND_UNICODE[cuts[1]..],
        ];
        ws.send(&Wire::new(TEXT, parts[0]).fin(false).bytes()).await;
        ws.send(&frame(PING, b"still open")).await;
        ws.pong(b"still open").await;
        ws.send(&Wire::new(CONTINUATION, parts[1]).fin(false).bytes())
            .await;
        ws.closed_with(INVALID_PAYLOAD).await;
    }
    // 6.4.3, 6.4.4: the same octets as three chops of one frame. The frame
    // is checked once it is complete, which Autobahn grades NON-STRICT
    // (allowed): the connection fails at the end of the frame.
    for (case, cuts) in [("6.4.3", [11, 15]), ("6.4.4", [12, 13])] {
        eprintln!("case {case}");
        let mut ws = g.ws().await;
        let whole = frame(TEXT, BEYOND_UNICODE);
        let header = whole.len() - BEYOND_UNICODE.len();
        let (first, second) = (header + cuts[0], header + cuts[1]);
        for chop in [&whole[..first], &whole[first..second], &whole[second..]] {
            ws.send(chop).await;
        }
        ws.closed_with(INVALID_PAYLOAD).await;
    }
}

// Section 7: close handling.

impl Raw {
    /// The next frame must be the server's answer to the client's close,
    /// with `code`; then the server closes the TCP connection.
    async fn answered_with(&mut self, code: u16) {
        let frame = self.frame().await;
        assert_eq!(frame.close().0, code, "{frame:?}");
        self.tcp_closed().await;
    }
}

#[tokio::test]
async fn s7_the_clients_close_is_echoed_and_ends_the_connection() {
    let g = Gateway::start().await;
    let hello = frame(TEXT, &subscribe_to(b"Hello World!"));
    // 7.1.1: a message, then a close: the answer, then the echo.
    eprintln!("case 7.1.1");
    let mut ws = g.ws().await;
    ws.send(&[hello.clone(), close_frame(NORMAL)].concat())
        .await;
    ws.echo("Hello World!").await;
    ws.answered_with(NORMAL).await;
    // 7.1.2-7.1.5: whatever follows a close is ignored: a second close, a
    // ping, a message, the rest of a fragmented message.
    let fragment = |fin| Wire::new(TEXT, b"fragment1").fin(fin).bytes();
    for (case, before, after) in [
        ("7.1.2", vec![], frame(CLOSE, b"")),
        ("7.1.3", vec![], frame(PING, b"")),
        ("7.1.4", vec![], hello.clone()),
        ("7.1.5", fragment(false), frame(CONTINUATION, b"fragment2")),
    ] {
        eprintln!("case {case}");
        let mut ws = g.ws().await;
        ws.send(&[before, close_frame(NORMAL), after].concat())
            .await;
        ws.answered_with(NORMAL).await;
    }
    // 7.3.1: a close without a code is answered without one.
    eprintln!("case 7.3.1");
    let mut ws = g.ws().await;
    ws.send(&frame(CLOSE, b"")).await;
    let answer = ws.frame().await;
    assert_eq!(
        (answer.opcode, answer.payload.len()),
        (CLOSE, 0),
        "{answer:?}"
    );
    ws.tcp_closed().await;
    // 7.3.3-7.3.5: a code, with a reason, with a reason of 123 octets.
    for (case, reason) in [
        ("7.3.3", &b""[..]),
        ("7.3.4", b"Hello World!"),
        ("7.3.5", &[b'*'; 123]),
    ] {
        eprintln!("case {case}");
        let mut ws = g.ws().await;
        ws.send(&frame(CLOSE, &close_payload(NORMAL, reason))).await;
        ws.answered_with(NORMAL).await;
    }
    // 7.7.1-7.7.13: every valid code is echoed.
    for (i, code) in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ]
    .into_iter()
    .enumerate()
    {
        eprintln!("case 7.7.{}", i + 1);
        let mut ws = g.ws().await;
        ws.close(code).await;
    }
}

#[tokio::test]
async fn s7_malformed_closes_fail_the_connection() {
    let g = Gateway::start().await;
    // 7.3.2: a one-octet close payload; 7.3.6: a reason of 124 octets (a
    // control frame over 125).
    for (case, payload) in [
        ("7.3.2", b"a".to_vec()),
        ("7.3.6", close_payload(NORMAL, &[b'*'; 124])),
    ] {
        g.fails(
            case,
            &[frame(CLOSE, &payload)],
            Chops::Whole,
            PROTOCOL_ERROR,
        )
        .await;
    }
    // 7.5.1: a reason that is not UTF-8.
    g.fails(
        "7.5.1",
        &[frame(CLOSE, &close_payload(NORMAL, WITH_SURROGATE))],
        Chops::Whole,
        INVALID_PAYLOAD,
    )
    .await;
    // 7.9.1-7.9.9: codes no endpoint may send are answered with 1002, and
    // so are 7.13.1, 7.13.2 (5000 and 65535, left undefined by the RFC).
    for (case, code) in [
        ("7.9.1", 0),
        ("7.9.2", 999),
        ("7.9.3", 1004),
        ("7.9.4", 1005),
        ("7.9.5", 1006),
        ("7.9.6", 1016),
        ("7.9.7", 1100),
        ("7.9.8", 2000),
        ("7.9.9", 2999),
        ("7.13.1", 5000),
        ("7.13.2", 65535),
    ] {
        eprintln!("case {case}");
        let mut ws = g.ws().await;
        ws.send(&close_frame(code)).await;
        ws.answered_with(PROTOCOL_ERROR).await;
    }
    // 7.1.6: 256 KiB, a message, a close and a ping back to back; over the
    // 4096-byte limit, so the first message already ends the connection.
    eprintln!("case 7.1.6");
    let mut ws = g.ws().await;
    let frames = [
        frame(TEXT, &b"BAsd7&jh23".repeat(256 * 1024 / 10)),
        frame(TEXT, &subscribe_to(b"Hello World!")),
        close_frame(NORMAL),
        frame(PING, b""),
    ];
    ws.refused_as_too_big(&frames.concat(), usize::MAX).await;
}

// The slow consumer's close (README: "one that cannot take a frame for 5 s
// is closed with code 1013 and the reason").

#[tokio::test]
async fn a_stalled_reader_reads_whole_frames_then_close_1013_with_the_reason() {
    let send_timeout = Duration::from_secs(4);
    let h = Stack::desk_with(GatewayConfig {
        anonymous_tokens: true,
        ws: WsLimits {
            send_timeout,
            ..WsLimits::default()
        },
        // Closed for taking too long, not for falling behind.
        lag_limit: LagLimit {
            max_lags: usize::MAX,
            ..LagLimit::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    let g = Gateway::with(h).await;
    // A small receive window: the server's writes block early.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut ws = Raw::upgrade(&g, socket.connect(g.h.http).await.unwrap()).await;
    ws.send(&frame(TEXT, &subscribe_to(b"USD_JPY"))).await;
    // The client reads nothing until the server has given up on it.
    let slow = "fxcast_gateway_slow_consumer_disconnects_total{kind=\"ws\"}";
    while g.h.metric(slow).await < 1.0 {
        for _ in 0..32 {
            g.h.publish("USD_JPY", "151.100", "151.110").await;
        }
    }
    // And stays stalled a while longer, as a busy browser tab would (this
    // sleep is the client's stall, not a wait for the server): the close is
    // owed to a client that resumes within the send timeout.
    tokio::time::sleep(send_timeout / 2).await;
    // Everything it then reads is whole frames: the acknowledgement, rates,
    // the error saying why, and the close with the reason.
    let mut last = 0;
    loop {
        let message = ws.json().await;
        match message["type"].as_str() {
            Some("subscribed") => assert_eq!(last, 0),
            Some("rate") => {
                let sequence = message["sequence"].as_u64().unwrap();
                assert!(sequence > last, "{message}");
                last = sequence;
            }
            Some("error") => {
                assert_eq!(message["code"], "slow_consumer", "{message}");
                break;
            }
            _ => panic!("unexpected {message}"),
        }
    }
    assert!(last >= 1, "no rate before the close");
    let reason = ws.closed_with(TRY_AGAIN).await;
    assert_eq!(
        reason,
        "slow consumer: could not take a frame within the send timeout"
    );
}
