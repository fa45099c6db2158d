//! `cargo xtask bench xdp`: builds and runs the XDP benchmark
//! (`llmgw/benches/xdp.rs`, through `BPF_PROG_TEST_RUN`; needs root) and
//! prints its markdown tables, which `BENCHMARKS.md` quotes.

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::{cargo, is_root, status};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Which {
    /// ns per packet (hit/miss, hot/random, 1 to 1M prefixes), load/update time.
    Xdp,
}

pub(crate) fn run(which: Which, args: Vec<String>) -> Result<()> {
    match which {
        Which::Xdp => {
            if !is_root() {
                bail!("the XDP benchmark loads BPF programs: run it as root");
            }
            let mut cmd = cargo();
            cmd.args(["bench", "--package", "llmgw", "--bench", "xdp", "--"])
                .args(args);
            status(&mut cmd)
        }
    }
}
