//! llmgw: an LLM ingress gateway. The L4 plane drops denied networks in XDP;
//! the L7 plane routes, rewrites and observes OpenAI-compatible traffic.
//! `config` reads resources, `model` compiles them into a `Snapshot` both
//! planes read; `docs/architecture.md` gives the layers.

pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod l4;
pub mod llm;
pub mod model;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod serve;

/// An error and its causes as one line, `a: b: c`, leaving out a cause whose
/// text the line already ends with (many errors print their source too).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_skips_repeated_causes() {
        let io = std::io::Error::from_raw_os_error(libc::EBUSY);
        let inner = anyhow::Error::new(io).context("`bpf_link_create` failed");
        let outer = inner.context("attaching to eth0 in native mode: `bpf_link_create` failed");
        let line = super::error_chain(outer.as_ref());
        assert_eq!(
            line,
            "attaching to eth0 in native mode: `bpf_link_create` failed: Device or resource busy (os error 16)"
        );
    }
}
