//! `llmgw-mock`: the tests' mock provider as a standalone process, for the
//! benchmark (`cargo xtask bench proxy`): TLS on one port, plaintext on
//! another, a fixed 855-byte chat.completion or an SSE stream when asked.

use std::{io::Write, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use clap::Parser;
use llmgw_tests::mock::{MockProvider, Reply, SEED_COMPLETION};

#[derive(Parser)]
#[command(about = "A mock OpenAI-compatible provider (TLS and plaintext)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    plain_listen: String,
    /// Write the CA certificate (PEM) that signs the TLS certificates here.
    #[arg(long)]
    ca_out: PathBuf,
    /// Also write `cert.pem` and `key.pem`, signed by that CA, for the
    /// quickstart's provider hosts into this directory (for a server put in
    /// front of the mock, such as nginx in the benchmark).
    #[arg(long)]
    front_cert_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    sse_chunks: usize,
    #[arg(long, default_value = "5")]
    sse_delay_ms: u64,
    /// Size of the chat.completion answer in bytes.
    #[arg(long, default_value_t = 855)]
    body_bytes: usize,
}

/// The seed's completion, its content padded to `size` bytes in all.
fn completion(size: usize) -> String {
    let pad = size.saturating_sub(SEED_COMPLETION.len());
    SEED_COMPLETION.replace(
        "Hello! I am Qwen, ...",
        &format!("Hello! I am Qwen, ...{}", "x".repeat(pad)),
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let tls = tokio::net::TcpListener::bind(&args.listen).await?;
        let plain = tokio::net::TcpListener::bind(&args.plain_listen).await?;
        let plain_addr = plain.local_addr()?;
        let mock = MockProvider::serve(tls, Arc::new(llmgw_tests::pki::Pki::new()));
        mock.serve_plain(plain);
        mock.set_recording(false);
        mock.pki.write_ca(&args.ca_out)?;
        if let Some(dir) = &args.front_cert_dir {
            let leaf = mock.pki.leaf(&[
                "dashscope.aliyuncs.com",
                "dashscope-intl.aliyuncs.com",
                "dashscope-stream.aliyuncs.com",
            ]);
            std::fs::write(dir.join("cert.pem"), leaf.cert_pem)?;
            std::fs::write(dir.join("key.pem"), leaf.key_pem)?;
        }
        let body = completion(args.body_bytes);
        let (n, delay) = (args.sse_chunks, Duration::from_millis(args.sse_delay_ms));
        mock.respond(move |r| {
            if asks_for_stream(&r.body) {
                Reply::stream(n, delay)
            } else {
                Reply::json(200, &body)
            }
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "tls {}", mock.addr)?;
        writeln!(out, "plain {plain_addr}")?;
        out.flush()?;
        drop(out);
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// `"stream":true` (or with a blank) in the body, without parsing it.
fn asks_for_stream(body: &[u8]) -> bool {
    let s = String::from_utf8_lossy(body);
    s.contains("\"stream\":true") || s.contains("\"stream\": true")
}
