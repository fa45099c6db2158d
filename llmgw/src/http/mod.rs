//! The bottom of the L7 stack: HTTP facts every layer may use and that use
//! nothing above them: authorities (host without port or trailing dot),
//! path normalisation, forwarding and hop-by-hop headers.

pub mod authority;
pub mod forwarded;
pub mod path;
