//! A real provider for interop tests: Debian's `nginx`, started on a free
//! port with TLS from the tests' CA, answering every provider host the
//! quickstart and `tests/python/streaming.yaml` name. `dashscope.aliyuncs.com`
//! answers the seed's `chat.completion`; `dashscope-intl` and
//! `dashscope-stream` answer an SSE stream (`c0c1c2`, then usage 5/3/8, then
//! `[DONE]`), as the mock does. The access log records, per request, the
//! protocol, status and Host nginx saw.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, mock::SEED_COMPLETION, pki::Pki};

/// The provider hosts nginx serves, with whether each answers a stream.
pub const HOSTS: &[(&str, bool)] = &[
    ("dashscope.aliyuncs.com", false),
    ("dashscope-intl.aliyuncs.com", true),
    ("dashscope-stream.aliyuncs.com", true),
];

/// How nginx speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `listen ... ssl http2`: ALPN offers h2 and http/1.1.
    Http2 { max_concurrent_streams: u32 },
    /// `listen ... ssl`: ALPN offers http/1.1 only.
    Http1,
}

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// The nginx binary (Debian puts it in /usr/sbin, not always on a user's PATH).
pub fn nginx_bin() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("nginx");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("/usr/sbin/nginx")
}

/// The SSE body the stream hosts answer: three content chunks, a usage
/// chunk, `[DONE]` (the same events as `Reply::stream(3, _)`).
pub fn sse_body() -> String {
    let mut out = String::new();
    for i in 0..3 {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen-plus\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"c{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    out.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"qwen-plus\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\n");
    out.push_str("data: [DONE]\n\n");
    out
}

/// A string as an nginx configuration token: single-quoted, with `\` and `'`
/// escaped and newlines as `\n` (nginx turns them back).
fn quoted(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

impl Nginx {
    /// Starts nginx on 127.0.0.1 (a free port); panics with nginx's own
    /// error output when it does not come up.
    pub fn start(pki: &Pki, protocol: Protocol) -> Nginx {
        let dir = tempfile::tempdir().expect("nginx dir");
        let d = dir.path();
        let names: Vec<&str> = HOSTS.iter().map(|(h, _)| *h).collect();
        let leaf = pki.leaf(&names);
        std::fs::write(d.join("cert.pem"), &leaf.cert_pem).expect("cert");
        std::fs::write(d.join("key.pem"), &leaf.key_pem).expect("key");
        let port = free_port();
        let (listen, h2) = match protocol {
            Protocol::Http2 {
                max_concurrent_streams,
            } => (
                "ssl http2",
                format!("http2_max_concurrent_streams {max_concurrent_streams};"),
            ),
            Protocol::Http1 => ("ssl", String::new()),
        };
        let mut servers = String::new();
        for (host, stream) in HOSTS {
            let (ct, body) = if *stream {
                ("text/event-stream", sse_body())
            } else {
                ("application/json", SEED_COMPLETION.to_string())
            };
            servers.push_str(&format!(
                r#"
    server {{
        listen 127.0.0.1:{port} {listen};
        server_name {host};
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        {h2}
        location / {{
            default_type {ct};
            return 200 {body};
        }}
    }}
"#,
                d = d.display(),
                body = quoted(&body),
            ));
        }
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
user root root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format interop '$server_protocol $status $host $http_host';
    access_log {d}/access.log interop;
    client_body_temp_path {d}/body;
    client_body_buffer_size 1m;
{servers}
}}
"#,
            d = d.display(),
        );
        std::fs::write(d.join("nginx.conf"), conf).expect("nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts (apt-get install nginx; `cargo xtask setup` does)");
        let mut n = Nginx {
            addr: ([127, 0, 0, 1], port).into(),
            child,
            dir,
        };
        n.wait_up();
        n
    }

    fn wait_up(&mut self) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited with {status}: {}", self.error_log());
            }
            if TcpStream::connect(self.addr).is_ok() {
                return;
            }
            if Instant::now() > end {
                panic!("nginx did not open {}: {}", self.addr, self.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// nginx's error log (why a request got 400, for instance).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// One line per request: `PROTOCOL STATUS HOST HTTP_HOST`.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT would wait for open connections; TERM stops at once.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
