//! The SMTP sink: a small SMTP server (RFC 5321: greeting, EHLO/HELO, AUTH PLAIN/LOGIN,
//! MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT) that records every message in the
//! ledger (platform "smtp", address = the recipient, headers = the message's headers, body =
//! the message) and answers `250` after DATA, or the error the knobs ask for.
//!
//! Where forced errors are answered (`mock.gate("smtp", rcpt)` runs at RCPT):
//! - content errors — any `554 …` and `552 5.3.4` — after the end of DATA (the server read
//!   the message and refused it), recorded with the message (path "DATA");
//! - every other code (`421`, `450`, `451`, `452`, `550 5.1.1`, `551`, `553`, `550 5.7.1`,
//!   `552 5.2.2`, `530`, `535`, …) at RCPT, recorded with path "RCPT";
//! - `421` (and the throttle and outage answers, also 421) closes the connection, as RFC 5321
//!   says; an outage also refuses new connections with a 421 greeting.
//!
//! `require_auth()` makes the sink demand AUTH before MAIL (530 otherwise) and check the
//! credentials (535 on a mismatch). Abrupt disconnects at any point end that session only.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::{Gate, LedgerEntry, Mock};

pub const PLATFORM: &str = "smtp";

/// Largest message taken (advertised as `SIZE`); bigger ones get `552 5.3.4`.
pub const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// Longest command line read (RFC 5321 says 512; be generous, never unbounded).
const MAX_LINE: usize = 4096;
/// Idle time after which the server says goodbye.
const IDLE: Duration = Duration::from_secs(300);

const AUTH_KEY: &str = "smtp:auth";

pub async fn serve(listener: TcpListener, mock: Arc<Mock>) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let mock = mock.clone();
                tokio::spawn(async move {
                    let _ = sock.set_nodelay(true);
                    // Any I/O error (reset, EOF) ends only this session.
                    let _ = session(sock, &mock).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                eprintln!("mock-platform: smtp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// From now on the sink demands `AUTH` with these credentials before `MAIL`.
pub fn require_auth(mock: &Mock, username: &str, password: &str) {
    mock.kv_set(AUTH_KEY, format!("{username}\0{password}"));
}

/// The reply line a forced `code` (`"550 5.1.1"`, `"421"`, …) is answered with, and its
/// numeric code.
pub fn reply_for(code: &str) -> (u16, String) {
    let code = code.trim();
    let (num, rest) = code.split_once(' ').unwrap_or((code, ""));
    let n: u16 = num.parse().unwrap_or(451);
    let known = match (n, rest) {
        (421, "") => Some("4.7.0 Try again later, closing connection"),
        (450, "") => Some("4.2.1 Mailbox temporarily unavailable, try again later"),
        (451, "") => Some("4.3.0 Local error in processing, try again later"),
        (452, "") => Some("4.3.1 Insufficient system storage"),
        (550, "" | "5.1.1") => {
            Some("5.1.1 The email account that you tried to reach does not exist")
        }
        (550, "5.7.1") => Some("5.7.1 Message rejected due to local policy"),
        (551, "") => Some("5.1.6 User not local; the mailbox has moved"),
        (553, "") => Some("5.1.3 Mailbox name not allowed"),
        (552, "" | "5.3.4") => Some("5.3.4 Message size exceeds fixed maximum message size"),
        (552, "5.2.2") => Some("5.2.2 Mailbox full"),
        (554, "" | "5.7.1") => Some("5.7.1 Message rejected as spam"),
        (530, "") => Some("5.7.0 Authentication required"),
        (535, "") => Some("5.7.8 Authentication credentials invalid"),
        _ => None,
    };
    let text = match known {
        Some(t) => t.to_string(),
        None if rest.is_empty() => "Requested action not taken".to_string(),
        // A given enhanced code (or text) is echoed as is.
        None => format!("{rest} Requested action not taken"),
    };
    (n, format!("{n} {text}"))
}

/// Whether a forced code is answered after DATA (the content was refused) rather than at
/// RCPT.
pub fn content_stage(code: &str) -> bool {
    let code = code.trim();
    code.starts_with("554") || code.starts_with("552 5.3.4")
}

#[derive(Default)]
struct Transaction {
    from: Option<String>,
    rcpts: Vec<String>,
    /// A content error chosen at RCPT, answered after DATA.
    pending: Option<String>,
}

enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// One line (with its ending) of at most `max` bytes; longer lines are consumed and reported.
async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(max as u64)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.ends_with(b"\n") {
        return Ok(Line::Text(buf));
    }
    if n < max {
        // EOF in the middle of a line.
        return Ok(Line::Eof);
    }
    // Skip the rest of the overlong line.
    loop {
        buf.clear();
        let n = (&mut *r)
            .take(max as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        if buf.ends_with(b"\n") {
            return Ok(Line::TooLong);
        }
    }
}

async fn say<W: AsyncWrite + Unpin>(w: &mut W, line: &str) -> std::io::Result<()> {
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\r\n").await?;
    w.flush().await
}

/// The address inside `MAIL FROM:<a>` / `RCPT TO:<a>` (parameters after it ignored).
fn path_arg(arg: &str) -> Option<String> {
    let arg = arg.trim_start();
    if let Some(rest) = arg.strip_prefix('<') {
        let end = rest.find('>')?;
        return Some(rest[..end].to_string());
    }
    arg.split_whitespace().next().map(str::to_string)
}

/// The message's header block as lowercased names and unfolded values.
pub fn parse_headers(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

struct Rec<'a> {
    mock: &'a Mock,
    from: String,
}

impl Rec<'_> {
    fn record(&self, stage: &str, address: &str, message: &[u8], status: u16, error: Option<&str>) {
        self.mock.record(LedgerEntry {
            platform: PLATFORM.into(),
            method: "SMTP".into(),
            path: stage.into(),
            query: format!("mail_from={}", self.from),
            headers: parse_headers(message),
            body: message.to_vec(),
            address: address.into(),
            status,
            error: error.map(str::to_string),
            at: SystemTime::now(),
        });
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(sock: S, mock: &Mock) -> std::io::Result<()> {
    let (r, mut w) = tokio::io::split(sock);
    let mut r = BufReader::new(r);
    if mock.knobs(PLATFORM).outage {
        return say(
            &mut w,
            "421 4.3.2 Service not available, closing transmission channel",
        )
        .await;
    }
    say(&mut w, "220 mock-platform ESMTP ready").await?;
    let required = mock.kv_get(AUTH_KEY);
    let mut greeted = false;
    let mut authed = false;
    let mut tx = Transaction::default();
    loop {
        let line = match tokio::time::timeout(IDLE, read_line(&mut r, MAX_LINE)).await {
            Err(_) => {
                return say(&mut w, "421 4.4.2 Idle timeout, closing connection").await;
            }
            Ok(l) => l?,
        };
        let line = match line {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                say(&mut w, "500 5.5.6 Line too long").await?;
                continue;
            }
            Line::Text(t) => t,
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                greeted = true;
                tx = Transaction::default();
                let who = if arg.trim().is_empty() {
                    "client"
                } else {
                    arg.trim()
                };
                w.write_all(
                    format!(
                        "250-mock-platform greets {who}\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
                         250-SMTPUTF8\r\n250-SIZE {MAX_MESSAGE}\r\n250-AUTH PLAIN LOGIN\r\n\
                         250 ENHANCEDSTATUSCODES\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
                w.flush().await?;
            }
            "HELO" => {
                greeted = true;
                tx = Transaction::default();
                say(&mut w, "250 mock-platform").await?;
            }
            "AUTH" => {
                let ok = auth(&mut r, &mut w, arg, required.as_deref()).await?;
                match ok {
                    Some(true) => {
                        authed = true;
                        say(&mut w, "235 2.7.0 Authentication successful").await?;
                    }
                    Some(false) => {
                        Rec {
                            mock,
                            from: String::new(),
                        }
                        .record("AUTH", "", b"", 535, Some("535"));
                        say(&mut w, "535 5.7.8 Authentication credentials invalid").await?;
                    }
                    None => say(&mut w, "501 5.7.0 Authentication canceled").await?,
                }
            }
            "MAIL" => {
                if !greeted {
                    say(&mut w, "503 5.5.1 Send EHLO or HELO first").await?;
                } else if required.is_some() && !authed {
                    say(&mut w, "530 5.7.0 Authentication required").await?;
                } else if tx.from.is_some() {
                    say(&mut w, "503 5.5.1 Nested MAIL command").await?;
                } else {
                    let from = arg
                        .get(..5)
                        .filter(|p| p.eq_ignore_ascii_case("FROM:"))
                        .and_then(|_| path_arg(&arg[5..]));
                    match from {
                        Some(f) => {
                            tx.from = Some(f);
                            say(&mut w, "250 2.1.0 OK").await?;
                        }
                        None => say(&mut w, "501 5.5.4 Syntax: MAIL FROM:<address>").await?,
                    }
                }
            }
            "RCPT" => {
                if tx.from.is_none() {
                    say(&mut w, "503 5.5.1 Need MAIL before RCPT").await?;
                    continue;
                }
                let to = arg
                    .get(..3)
                    .filter(|p| p.eq_ignore_ascii_case("TO:"))
                    .and_then(|_| path_arg(&arg[3..]))
                    .filter(|a| !a.is_empty());
                let Some(to) = to else {
                    say(&mut w, "501 5.5.4 Syntax: RCPT TO:<address>").await?;
                    continue;
                };
                let rec = Rec {
                    mock,
                    from: tx.from.clone().unwrap_or_default(),
                };
                let refuse = match mock.gate(PLATFORM, &to).await {
                    Gate::Pass => None,
                    Gate::Error(code) if content_stage(&code) => {
                        tx.pending.get_or_insert(code);
                        None
                    }
                    Gate::Error(code) => Some(code),
                    Gate::Throttle => Some("421 4.7.0".to_string()),
                    Gate::Outage => Some("421 4.3.2".to_string()),
                };
                match refuse {
                    None => {
                        tx.rcpts.push(to);
                        say(&mut w, "250 2.1.5 OK").await?;
                    }
                    Some(code) => {
                        let (n, reply) = match code.as_str() {
                            "421 4.7.0" => (421, "421 4.7.0 Too many messages, slow down".into()),
                            "421 4.3.2" => (
                                421,
                                "421 4.3.2 Service not available, closing transmission channel"
                                    .into(),
                            ),
                            c => reply_for(c),
                        };
                        rec.record("RCPT", &to, b"", n, Some(&code));
                        say(&mut w, &reply).await?;
                        if n == 421 {
                            return Ok(());
                        }
                    }
                }
            }
            "DATA" => {
                if tx.rcpts.is_empty() {
                    say(&mut w, "503 5.5.1 Need RCPT before DATA").await?;
                    continue;
                }
                say(&mut w, "354 End data with <CR><LF>.<CR><LF>").await?;
                let Some((message, too_big)) = read_data(&mut r).await? else {
                    // The client went away mid-message: nothing was delivered.
                    return Ok(());
                };
                let rec = Rec {
                    mock,
                    from: tx.from.clone().unwrap_or_default(),
                };
                let forced = if too_big {
                    Some("552 5.3.4".to_string())
                } else {
                    tx.pending.clone()
                };
                let reply = match &forced {
                    Some(code) => {
                        let (n, reply) = reply_for(code);
                        for to in &tx.rcpts {
                            rec.record("DATA", to, &message, n, Some(code));
                        }
                        reply
                    }
                    None => {
                        for to in &tx.rcpts {
                            rec.record("DATA", to, &message, 250, None);
                        }
                        format!("250 2.0.0 OK: queued as M{}", mock.next_seq())
                    }
                };
                tx = Transaction::default();
                say(&mut w, &reply).await?;
            }
            "RSET" => {
                tx = Transaction::default();
                say(&mut w, "250 2.0.0 OK").await?;
            }
            "NOOP" => say(&mut w, "250 2.0.0 OK").await?,
            "VRFY" => {
                say(
                    &mut w,
                    "252 2.1.5 Cannot VRFY user, but will accept message",
                )
                .await?
            }
            "STARTTLS" => say(&mut w, "454 4.7.0 TLS not available").await?,
            "QUIT" => {
                let _ = say(&mut w, "221 2.0.0 Bye").await;
                return Ok(());
            }
            _ => say(&mut w, "500 5.5.2 Command unrecognized").await?,
        }
    }
}

/// Reads the message after `354` up to the lone `.` line, undoing dot-stuffing. None: the
/// client disconnected first. The flag says it was over `MAX_MESSAGE` (and was discarded).
async fn read_data<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(Vec<u8>, bool)>> {
    let mut message = Vec::new();
    let mut too_big = false;
    let mut line = Vec::new();
    loop {
        let n = tokio::time::timeout(IDLE, (&mut *r).take(64 * 1024).read_until(b'\n', &mut line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle in DATA"))??;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            // A long line arrives in pieces; wait for its end.
            if line.len() <= MAX_MESSAGE {
                continue;
            }
            too_big = true;
            line.clear();
            continue;
        }
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        let content = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        if !too_big {
            if message.len() + content.len() > MAX_MESSAGE {
                too_big = true;
                message.clear();
            } else {
                message.extend_from_slice(content);
            }
        }
        line.clear();
    }
    Ok(Some((message, too_big)))
}

/// Runs an AUTH exchange. Some(true): accepted; Some(false): wrong credentials; None: the
/// client canceled or sent garbage.
async fn auth<R, W>(
    r: &mut R,
    w: &mut W,
    arg: &str,
    required: Option<&str>,
) -> std::io::Result<Option<bool>>
where
    R: AsyncBufReadExt + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut parts = arg.split_whitespace();
    let mech = parts.next().unwrap_or("").to_ascii_uppercase();
    let initial = parts.next().map(str::to_string);
    async fn answer<R: AsyncBufReadExt + Unpin, W: AsyncWrite + Unpin>(
        r: &mut R,
        w: &mut W,
        prompt: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        say(w, &format!("334 {prompt}")).await?;
        let Line::Text(t) = read_line(r, MAX_LINE).await? else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        let s = String::from_utf8_lossy(&t);
        let s = s.trim();
        if s == "*" {
            return Ok(None);
        }
        Ok(B64.decode(s).ok())
    }
    let (user, pass) = match mech.as_str() {
        "PLAIN" => {
            let raw = match initial {
                Some(i) if i != "=" => B64.decode(i).ok(),
                _ => answer(r, w, "").await?,
            };
            let Some(raw) = raw else { return Ok(None) };
            let fields: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            if fields.len() != 3 {
                return Ok(None);
            }
            (fields[1].to_vec(), fields[2].to_vec())
        }
        "LOGIN" => {
            let user = match initial {
                Some(i) => B64.decode(i).ok(),
                None => answer(r, w, "VXNlcm5hbWU6").await?,
            };
            let Some(user) = user else { return Ok(None) };
            let Some(pass) = answer(r, w, "UGFzc3dvcmQ6").await? else {
                return Ok(None);
            };
            (user, pass)
        }
        _ => return Ok(None),
    };
    let given = format!(
        "{}\0{}",
        String::from_utf8_lossy(&user),
        String::from_utf8_lossy(&pass)
    );
    Ok(Some(required.is_none_or(|want| want == given)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockConfig;
    use std::net::SocketAddr;
    use tokio::net::TcpStream;

    async fn sink() -> (Arc<Mock>, SocketAddr) {
        let mock = Mock::new(MockConfig::default());
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(serve(l, mock.clone()));
        (mock, addr)
    }

    struct Client {
        r: BufReader<tokio::net::tcp::OwnedReadHalf>,
        w: tokio::net::tcp::OwnedWriteHalf,
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> (Client, String) {
            let s = TcpStream::connect(addr).await.expect("connect");
            let (r, w) = s.into_split();
            let mut c = Client {
                r: BufReader::new(r),
                w,
            };
            let greeting = c.reply().await;
            (c, greeting)
        }

        /// A whole (possibly multi-line) reply; its last line.
        async fn reply(&mut self) -> String {
            loop {
                let mut l = String::new();
                self.r.read_line(&mut l).await.expect("read");
                if l.is_empty() {
                    return String::new();
                }
                if l.as_bytes().get(3) != Some(&b'-') {
                    return l.trim_end().to_string();
                }
            }
        }

        async fn cmd(&mut self, line: &str) -> String {
            self.w
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .expect("write");
            self.reply().await
        }
    }

    #[tokio::test]
    async fn a_message_is_recorded_unstuffed() {
        let (mock, addr) = sink().await;
        let (mut c, greeting) = Client::connect(addr).await;
        assert!(greeting.starts_with("220 "));
        assert!(c.cmd("EHLO test").await.starts_with("250 "));
        assert!(c
            .cmd("MAIL FROM:<shop@example.com> BODY=8BITMIME")
            .await
            .starts_with("250"));
        assert!(c.cmd("RCPT TO:<ann@example.org>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        let data = "Subject: Hi\r\nMessage-ID: <x@y>\r\nList-Unsubscribe:\r\n <https://u>\r\n\r\n..leading dot\r\nbody\r\n.\r\n";
        c.w.write_all(data.as_bytes()).await.expect("write");
        let done = c.reply().await;
        assert!(done.starts_with("250 2.0.0"), "{done}");
        assert!(c.cmd("NOOP").await.starts_with("250"));
        assert!(c.cmd("RSET").await.starts_with("250"));
        assert!(c.cmd("QUIT").await.starts_with("221"));
        let l = mock.accepted("smtp");
        assert_eq!(l.len(), 1);
        let e = &l[0];
        assert_eq!(e.address, "ann@example.org");
        assert_eq!(e.status, 250);
        assert_eq!(e.header("subject"), Some("Hi"));
        assert_eq!(e.header("list-unsubscribe"), Some("<https://u>"));
        assert_eq!(
            String::from_utf8_lossy(&e.body),
            "Subject: Hi\r\nMessage-ID: <x@y>\r\nList-Unsubscribe:\r\n <https://u>\r\n\r\n.leading dot\r\nbody\r\n"
        );
        assert_eq!(e.query, "mail_from=shop@example.com");
    }

    #[tokio::test]
    async fn forced_codes_answer_at_their_stage() {
        let (mock, addr) = sink().await;
        mock.fail_address("smtp", "gone@example.org", Some("550 5.1.1"));
        mock.fail_address("smtp", "spam@example.org", Some("554 5.7.1"));
        let (mut c, _) = Client::connect(addr).await;
        c.cmd("EHLO t").await;
        c.cmd("MAIL FROM:<a@b.c>").await;
        let r = c.cmd("RCPT TO:<gone@example.org>").await;
        assert!(r.starts_with("550 5.1.1 "), "{r}");
        c.cmd("RSET").await;
        c.cmd("MAIL FROM:<a@b.c>").await;
        assert!(c.cmd("RCPT TO:<spam@example.org>").await.starts_with("250"));
        c.cmd("DATA").await;
        c.w.write_all(b"Subject: x\r\n\r\nbuy now\r\n.\r\n")
            .await
            .expect("write");
        let r = c.reply().await;
        assert!(r.starts_with("554 5.7.1 "), "{r}");
        let l = mock.ledger("smtp");
        assert_eq!(
            l.iter()
                .map(|e| (e.path.as_str(), e.address.as_str(), e.status))
                .collect::<Vec<_>>(),
            vec![
                ("RCPT", "gone@example.org", 550),
                ("DATA", "spam@example.org", 554)
            ]
        );
        assert!(mock.accepted("smtp").is_empty());
        // 421 closes the connection.
        mock.fail_next("smtp", "421", 1);
        c.cmd("MAIL FROM:<a@b.c>").await;
        let r = c.cmd("RCPT TO:<x@example.org>").await;
        assert!(r.starts_with("421 "), "{r}");
        assert_eq!(c.reply().await, "", "connection closed after 421");
    }

    #[tokio::test]
    async fn abrupt_disconnects_end_only_that_session() {
        let (mock, addr) = sink().await;
        let (mut c, _) = Client::connect(addr).await;
        c.cmd("EHLO t").await;
        c.cmd("MAIL FROM:<a@b.c>").await;
        c.cmd("RCPT TO:<x@example.org>").await;
        c.cmd("DATA").await;
        c.w.write_all(b"Subject: half\r\n\r\nno end")
            .await
            .expect("write");
        drop(c);
        // Garbage and an overlong line on another connection.
        let (mut c, _) = Client::connect(addr).await;
        assert!(c.cmd("HELLO?").await.starts_with("500"));
        assert!(c.cmd(&"X".repeat(10_000)).await.starts_with("500 5.5.6"));
        assert!(c.cmd("RCPT TO:<x@y.z>").await.starts_with("503"));
        drop(c);
        // The sink still serves.
        let (mut c, _) = Client::connect(addr).await;
        c.cmd("HELO t").await;
        c.cmd("MAIL FROM:<a@b.c>").await;
        c.cmd("RCPT TO:<y@example.org>").await;
        c.cmd("DATA").await;
        c.w.write_all(b"Subject: whole\r\n\r\nok\r\n.\r\n")
            .await
            .expect("write");
        assert!(c.reply().await.starts_with("250"));
        let l = mock.ledger("smtp");
        assert_eq!(l.len(), 1, "the half message was not recorded");
        assert_eq!(l[0].header("subject"), Some("whole"));
    }

    #[tokio::test]
    async fn auth_is_checked_when_required() {
        let (mock, addr) = sink().await;
        require_auth(&mock, "user", "secret");
        let (mut c, _) = Client::connect(addr).await;
        c.cmd("EHLO t").await;
        assert!(c.cmd("MAIL FROM:<a@b.c>").await.starts_with("530 5.7.0"));
        let bad = B64.encode(b"\0user\0wrong");
        assert!(c
            .cmd(&format!("AUTH PLAIN {bad}"))
            .await
            .starts_with("535 5.7.8"));
        assert!(c.cmd("AUTH LOGIN").await.starts_with("334 VXNlcm5hbWU6"));
        assert!(c
            .cmd(&B64.encode("user"))
            .await
            .starts_with("334 UGFzc3dvcmQ6"));
        assert!(c.cmd(&B64.encode("secret")).await.starts_with("235"));
        assert!(c.cmd("MAIL FROM:<a@b.c>").await.starts_with("250"));
        let l = mock.ledger("smtp");
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].path.as_str(), l[0].status), ("AUTH", 535));
    }

    #[tokio::test]
    async fn outage_refuses_at_the_greeting() {
        let (mock, addr) = sink().await;
        mock.set_knobs(
            "smtp",
            crate::Knobs {
                outage: true,
                ..Default::default()
            },
        );
        let (mut c, greeting) = Client::connect(addr).await;
        assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
        assert_eq!(c.reply().await, "");
    }

    #[test]
    fn replies_and_stages() {
        assert_eq!(reply_for("550 5.1.1").0, 550);
        assert!(reply_for("550 5.1.1").1.starts_with("550 5.1.1 "));
        assert!(reply_for("421").1.starts_with("421 4.7.0 "));
        assert!(reply_for("551").1.starts_with("551 5.1.6 "));
        assert!(reply_for("553").1.starts_with("553 5.1.3 "));
        assert!(reply_for("552 5.2.2").1.starts_with("552 5.2.2 "));
        assert!(reply_for("552 5.3.4").1.starts_with("552 5.3.4 "));
        assert!(reply_for("535").1.starts_with("535 5.7.8 "));
        assert!(reply_for("530").1.starts_with("530 5.7.0 "));
        assert!(reply_for("550 5.7.26").1.starts_with("550 5.7.26 "));
        assert!(content_stage("554 5.7.1"));
        assert!(content_stage("554"));
        assert!(content_stage("552 5.3.4"));
        assert!(!content_stage("552 5.2.2"));
        assert!(!content_stage("550 5.1.1"));
        assert!(!content_stage("550 5.7.1"));
        assert!(!content_stage("421"));
    }
}
