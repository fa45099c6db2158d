//! The `llmgw` command line. Placeholder until the config loader and the
//! planes land: prints the size of the embedded XDP object.

static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/llmgw"));

fn main() {
    println!("embedded XDP object: {} bytes", XDP_OBJECT.len());
}
