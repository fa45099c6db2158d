//! llmgw, the LLM ingress gateway, as a library: the binary (`main.rs`) is
//! only its command line. This branch holds the L4 (XDP) plane.

pub mod l4;
