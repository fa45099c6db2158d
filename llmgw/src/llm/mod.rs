//! The OpenAI-compatible semantics llmgw applies, apart from any transport:
//! the provider rewrite of a request body, the conversion between a
//! completion and a stream when the provider's `stream` overrides the
//! client's, token usage read from answers, and the one SSE parser.

pub mod convert;
pub mod json;
pub mod rewrite;
pub mod sse;
pub mod usage;
