//! llmgw: an LLM ingress gateway. The L4 plane drops denied networks in XDP;
//! the L7 plane routes, rewrites and observes OpenAI-compatible traffic.
//! `config` turns resources into a `Snapshot` both planes read.

pub mod config;
pub mod l4;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod serve;
