//! `cargo xtask bench xdp`: ns per packet of the XDP program through
//! `BPF_PROG_TEST_RUN` (hit and miss, hot and random sources, 1 / 10k / 1M
//! prefixes, with and without the front filter), the same for IPv6 (the
//! IPv6 LPM trie behind the shared front filter), and the time to load and to update
//! 100k prefixes. Prints markdown tables. Needs root.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use llmgw::l4::{DenyEntry, Destinations, L4Rules, XdpProgram, frames};

const PORT: u16 = 443;
const GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const GW6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
const RUNS: usize = 5;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn u32(&mut self) -> u32 {
        (self.next() >> 16) as u32
    }
}

/// `n` prefixes: up to 1000 short ones (/20../24), the rest random /32s.
struct PrefixSet {
    hosts: HashSet<u32>,
    short: Vec<(u32, u8)>,
}

impl PrefixSet {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        if n == 1 {
            return Self {
                hosts: HashSet::new(),
                short: vec![(0x0a00_0000, 24)],
            };
        }
        let k = (n / 10).min(1000);
        let mut short = Vec::with_capacity(k);
        for _ in 0..k {
            let len = 20 + (rng.next() % 5) as u8;
            short.push((rng.u32() & (u32::MAX << (32 - len)), len));
        }
        let mut hosts = HashSet::with_capacity(n - k);
        while hosts.len() < n - k {
            hosts.insert(rng.u32());
        }
        Self { hosts, short }
    }

    fn contains(&self, a: u32) -> bool {
        self.hosts.contains(&a)
            || self
                .short
                .iter()
                .any(|(p, l)| a & (u32::MAX << (32 - l)) == *p)
    }

    fn rules(&self) -> L4Rules {
        let net = |a: u32, l: u8| DenyEntry {
            net: ipnet::IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), l).expect("prefix")),
            rule: format!("bench/r[{}]", a % 16),
            ports: None,
        };
        L4Rules {
            entries: self
                .short
                .iter()
                .map(|(a, l)| net(*a, *l))
                .chain(self.hosts.iter().map(|a| net(*a, 32)))
                .collect(),
            listener_ports: vec![PORT, 80],
            destinations: Default::default(),
        }
    }

    /// `count` sources that match (from hosts and short prefixes).
    fn hits(&self, count: usize, rng: &mut Rng) -> Vec<u32> {
        let hosts: Vec<u32> = self.hosts.iter().take(count).copied().collect();
        (0..count)
            .map(|i| {
                if i % 2 == 0 && !hosts.is_empty() {
                    hosts[i / 2 % hosts.len()]
                } else {
                    let (p, l) = self.short[i % self.short.len()];
                    p | (rng.u32() & !(u32::MAX << (32 - l)))
                }
            })
            .collect()
    }

    /// `count` sources that match nothing.
    fn misses(&self, count: usize, rng: &mut Rng) -> Vec<u32> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let a = rng.u32();
            if !self.contains(a) {
                out.push(a);
            }
        }
        out
    }
}

/// `n` IPv6 prefixes: up to 1000 short ones (/32../64), the rest random /128s.
struct PrefixSet6 {
    nets: Vec<(u128, u8)>,
}

impl PrefixSet6 {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = Rng(seed);
        let mut r128 = || (u128::from(rng.next()) << 64) | u128::from(rng.next());
        if n == 1 {
            return Self {
                nets: vec![(0x2001_0db8_0000_0000_0000_0000_0000_0000, 48)],
            };
        }
        let k = (n / 10).min(1000);
        let mut nets = Vec::with_capacity(n);
        for i in 0..k {
            let len = [32u8, 40, 48, 56, 64][i % 5];
            nets.push((r128() & (u128::MAX << (128 - len)), len));
        }
        let mut seen = HashSet::with_capacity(n);
        while nets.len() < n {
            let a = r128();
            if seen.insert(a) {
                nets.push((a, 128));
            }
        }
        Self { nets }
    }

    fn contains(&self, a: u128) -> bool {
        self.nets.iter().any(|(p, l)| {
            let mask = if *l == 0 { 0 } else { u128::MAX << (128 - l) };
            a & mask == *p
        })
    }

    fn rules(&self) -> L4Rules {
        L4Rules {
            entries: self
                .nets
                .iter()
                .map(|(a, l)| DenyEntry {
                    net: ipnet::IpNet::V6(
                        ipnet::Ipv6Net::new(Ipv6Addr::from(*a), *l).expect("prefix"),
                    ),
                    rule: format!("bench/r[{}]", a % 16),
                    ports: None,
                })
                .collect(),
            listener_ports: vec![PORT, 80],
            destinations: Default::default(),
        }
    }

    /// `count` matching sources: alternately a listed /128 (when there are
    /// any) and an address inside a shorter prefix.
    fn hits(&self, count: usize, rng: &mut Rng) -> Vec<u128> {
        let short: Vec<(u128, u8)> = self
            .nets
            .iter()
            .copied()
            .filter(|(_, l)| *l < 128)
            .collect();
        let hosts: Vec<u128> = self
            .nets
            .iter()
            .filter(|(_, l)| *l == 128)
            .map(|(a, _)| *a)
            .take(count)
            .collect();
        (0..count)
            .map(|i| {
                if i % 2 == 0 && !hosts.is_empty() {
                    hosts[i / 2 % hosts.len()]
                } else {
                    let (p, l) = short[i % short.len()];
                    let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                    p | (r & !(u128::MAX << (128 - l)))
                }
            })
            .collect()
    }

    /// `count` sources matching nothing.
    fn misses(&self, count: usize, rng: &mut Rng) -> Vec<u128> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let a = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            if !self.contains(a) {
                out.push(a);
            }
        }
        out
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn frame(src: u32) -> Vec<u8> {
    frames::tcp4(Ipv4Addr::from(src), GW, PORT)
}

fn frame6(src: u128) -> Vec<u8> {
    frames::tcp6(Ipv6Addr::from(src), GW6, PORT)
}

/// Median over runs of the kernel's mean ns per packet, same packet repeated.
fn hot(p: &mut XdpProgram, src: u32, repeat: u32, want: u32) -> f64 {
    hot_frame(p, &frame(src), repeat, want)
}

fn hot_frame(p: &mut XdpProgram, f: &[u8], repeat: u32, want: u32) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let (action, d) = p.run_repeat(f, repeat).expect("test run");
            assert_eq!(action, want, "unexpected verdict");
            d.as_nanos() as f64
        })
        .collect();
    median(runs)
}

/// Median over runs of the mean ns per packet, one run per distinct source.
fn random(p: &mut XdpProgram, srcs: &[u32], want: u32) -> f64 {
    let frames: Vec<Vec<u8>> = srcs.iter().map(|s| frame(*s)).collect();
    random_frames(p, &frames, want)
}

fn random_frames(p: &mut XdpProgram, frames: &[Vec<u8>], want: u32) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let mut total = Duration::ZERO;
            for f in frames {
                let (action, d) = p.run_repeat(f, 1).expect("test run");
                assert_eq!(action, want);
                total += d;
            }
            total.as_nanos() as f64 / frames.len() as f64
        })
        .collect();
    median(runs)
}

fn load(set: &PrefixSet, filter: bool) -> (XdpProgram, Duration) {
    load_rules(&set.rules(), filter)
}

fn load_rules(rules: &L4Rules, filter: bool) -> (XdpProgram, Duration) {
    let mut p = XdpProgram::load_with(filter).expect("load XDP program (run as root)");
    let t = Instant::now();
    p.sync(rules).expect("sync");
    (p, t.elapsed())
}

fn main() {
    // `cargo bench` passes `--bench`; ignore it.
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[usize] = if quick {
        &[1, 10_000]
    } else {
        &[1, 10_000, 1_000_000]
    };
    const DROP: u32 = 1;
    const PASS: u32 = 2;
    let mut rng = Rng(0x5eed_1234_5678_9abc);

    // What repeat=1 timing adds per run (timer reads, run context): the
    // random columns are quoted raw and minus this.
    let overhead = {
        let set = PrefixSet::new(1, 1);
        let (mut p, _) = load(&set, true);
        let f = frame(0x0a00_0001);
        let one = median(
            (0..4000)
                .map(|_| p.run_repeat(&f, 1).expect("run").1.as_nanos() as f64)
                .collect(),
        );
        let many = hot(&mut p, 0x0a00_0001, 200_000, DROP);
        println!(
            "repeat=1 timing: {one:.0} ns for a hot packet that costs {many:.0} ns at repeat=200000; \
             per-run overhead {:.0} ns (subtracted in brackets)\n",
            one - many
        );
        one - many
    };
    let cell = |raw: f64| format!("{raw:.0} ({:.0})", (raw - overhead).max(0.0));
    println!(
        "| prefixes | hot hit | hot hit, destination checked | hot miss | random hit | random miss | random miss, no /24 filter | parse only (port not listened) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut loads = Vec::new();
    for &n in sizes {
        let set = PrefixSet::new(n, n as u64 + 7);
        let hits = set.hits(4096, &mut rng);
        let misses = set.misses(4096, &mut rng);
        let (mut p, t) = load(&set, true);
        loads.push((n, t));
        let repeat = 200_000;
        let hot_hit = hot(&mut p, hits[0], repeat, DROP);
        let hot_miss = hot(&mut p, misses[0], repeat, PASS);
        let rnd_hit = random(&mut p, &hits, DROP);
        let rnd_miss = random(&mut p, &misses, PASS);
        let parse = {
            let f = frames::tcp4(Ipv4Addr::from(hits[0]), GW, 22);
            median(
                (0..RUNS)
                    .map(|_| p.run_repeat(&f, repeat).expect("run").1.as_nanos() as f64)
                    .collect(),
            )
        };
        // The gateway's address known: a would-be drop also looks up its
        // destination.
        let mut checked = set.rules();
        checked.destinations = Destinations::Only(vec![GW.into()]);
        p.sync(&checked).expect("sync with destinations");
        let hot_hit_dst = hot(&mut p, hits[0], repeat, DROP);
        drop(p);
        let (mut nf, _) = load(&set, false);
        let rnd_miss_nf = random(&mut nf, &misses, PASS);
        drop(nf);
        println!(
            "| {n} | {hot_hit:.0} | {hot_hit_dst:.0} | {hot_miss:.0} | {} | {} | {} | {parse:.0} |",
            cell(rnd_hit),
            cell(rnd_miss),
            cell(rnd_miss_nf)
        );
    }
    println!();
    println!(
        "ns per packet, median of {RUNS} runs. hot: the same 64-byte TCP SYN, repeat=200000; \
         random: 4096 distinct sources, one run each, raw (minus the repeat=1 overhead)."
    );

    // IPv6: every prefix in the IPv6 LPM trie.
    println!();
    println!("IPv6 (the IPv6 LPM trie behind the shared front filter):");
    println!();
    println!(
        "| prefixes | hot hit (/128) | hot hit (in a shorter prefix) | hot miss | random hit | random miss | random miss, no filter |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    // The IPv6 trie holds at most MAX_V6_PREFIXES (262144) entries.
    let sizes6: &[usize] = if quick {
        &[1, 10_000]
    } else {
        &[1, 10_000, 250_000]
    };
    for &n in sizes6 {
        let set = PrefixSet6::new(n, n as u64 + 11);
        let hits = set.hits(4096, &mut rng);
        let misses = set.misses(4096, &mut rng);
        let (mut p, t) = load_rules(&set.rules(), true);
        loads.push((n, t));
        let repeat = 200_000;
        let host = hits[0];
        let hot_host = if n == 1 {
            f64::NAN
        } else {
            hot_frame(&mut p, &frame6(host), repeat, DROP)
        };
        let hot_short = hot_frame(&mut p, &frame6(hits[1]), repeat, DROP);
        let hot_miss = hot_frame(&mut p, &frame6(misses[0]), repeat, PASS);
        let hit_frames: Vec<Vec<u8>> = hits.iter().map(|a| frame6(*a)).collect();
        let miss_frames: Vec<Vec<u8>> = misses.iter().map(|a| frame6(*a)).collect();
        let rnd_hit = random_frames(&mut p, &hit_frames, DROP);
        let rnd_miss = random_frames(&mut p, &miss_frames, PASS);
        drop(p);
        let (mut nf, _) = load_rules(&set.rules(), false);
        let rnd_miss_nf = random_frames(&mut nf, &miss_frames, PASS);
        drop(nf);
        let host_cell = if hot_host.is_nan() {
            "-".to_string()
        } else {
            format!("{hot_host:.0}")
        };
        println!(
            "| {n} | {host_cell} | {hot_short:.0} | {hot_miss:.0} | {} | {} | {} |",
            cell(rnd_hit),
            cell(rnd_miss),
            cell(rnd_miss_nf)
        );
    }

    // Load and update of 100k prefixes.
    println!();
    println!("| operation | time |");
    println!("|---|---:|");
    let v4 = sizes.len();
    for (i, (n, t)) in loads.iter().enumerate() {
        println!(
            "| load {n} {} prefixes (sync from empty) | {:.1} ms |",
            if i < v4 { "IPv4" } else { "IPv6" },
            t.as_secs_f64() * 1e3
        );
    }
    let set = PrefixSet::new(100_000, 99);
    let mut times = Vec::new();
    let mut upd = Vec::new();
    let mut noop = Vec::new();
    for run in 0..3 {
        let (mut p, t) = load(&set, true);
        times.push(t.as_secs_f64());
        // Replace 10% of the /32s.
        let mut rules = set.rules();
        let mut r = Rng(run + 1);
        let replace = rules.entries.len() / 10;
        for e in rules.entries.iter_mut().rev().take(replace) {
            e.net =
                ipnet::IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(r.u32()), 32).expect("net"));
        }
        let t = Instant::now();
        let report = p.sync(&rules).expect("update");
        upd.push(t.elapsed().as_secs_f64());
        assert!(report.added > 0 && report.removed > 0);
        let t = Instant::now();
        p.sync(&rules).expect("no-op sync");
        noop.push(t.elapsed().as_secs_f64());
    }
    println!(
        "| load 100k prefixes (median of 3) | {:.1} ms |",
        median(times) * 1e3
    );
    println!(
        "| update 100k prefixes, 10% replaced (median of 3) | {:.1} ms |",
        median(upd) * 1e3
    );
    println!(
        "| sync 100k prefixes, nothing changed (median of 3) | {:.1} ms |",
        median(noop) * 1e3
    );
}
