//! The L7 plane: listeners, routing, LLM request rewriting, the upstream
//! client and streaming back to the client.

pub mod router;
