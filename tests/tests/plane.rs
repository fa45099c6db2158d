//! The pinned plane without interfaces: maps pinned under a private bpffs
//! root, adopted (with their contents and rule ids) by a later `Plane`,
//! read by `status` without owning them, removed by `detach`. Needs root.

use std::path::PathBuf;

use llmgw::l4::{self, DenyEntry, L4Error, L4Rules, Plane, PlaneOptions, XdpMode};
use llmgw_tests::privileged;

/// A private pin root, detached on drop.
struct Root(PathBuf);

impl Root {
    fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/llmgw-p-{}-{tag}",
            std::process::id()
        )))
    }

    fn opts(&self) -> PlaneOptions {
        PlaneOptions {
            bpf_root: self.0.clone(),
            v4_filter: true,
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = l4::detach(&self.0);
    }
}

fn entry(net: &str, rule: &str, ports: Option<&[u16]>) -> DenyEntry {
    DenyEntry {
        net: net.parse().unwrap(),
        rule: rule.into(),
        ports: ports.map(<[u16]>::to_vec),
    }
}

fn rules_a() -> L4Rules {
    L4Rules {
        entries: vec![
            entry("10.0.0.0/8", "ns/a[0]", None),
            entry("10.1.0.0/16", "ns/b[0]", Some(&[443])),
            entry("2001:db8::/32", "ns/c[0]", None),
        ],
        listener_ports: vec![80, 443],
        destinations: Default::default(),
    }
}

fn ids(root: &Root) -> Vec<(String, u32)> {
    let mut v: Vec<_> = l4::status(&root.0)
        .unwrap()
        .stats
        .rules
        .iter()
        .map(|r| (r.name.clone(), r.id))
        .collect();
    v.sort();
    v
}

#[test]
fn pins_outlive_the_plane_and_are_adopted() {
    if !privileged("pins_outlive_the_plane_and_are_adopted") {
        return;
    }
    let root = Root::new("adopt");
    let plane = Plane::start_with(&root.opts(), &[], XdpMode::Auto, &rules_a()).unwrap();
    let first = ids(&root);
    assert_eq!(first.len(), 3);
    drop(plane);

    // Nobody owns the maps now; status reads them from the pins.
    let st = l4::status(&root.0).unwrap();
    assert_eq!(st.prefixes.len(), 3);
    assert_eq!(st.listeners, vec![80, 443]);
    let p = st
        .prefixes
        .iter()
        .find(|p| p.net.to_string() == "10.1.0.0/16")
        .unwrap();
    assert_eq!(p.all_ports.as_deref(), Some("ns/a[0]"));
    assert_eq!(p.ports, vec![(443, "ns/b[0]".to_string())]);

    // A new plane adopts them: same ids for the same names, a new one for
    // the new rule, the removed rule's entries gone.
    let mut b = rules_a();
    b.entries.remove(2);
    b.entries.push(entry("192.0.2.0/24", "ns/d[0]", None));
    let mut plane = Plane::start_with(&root.opts(), &[], XdpMode::Auto, &b).unwrap();
    let second = ids(&root);
    for (name, id) in &first {
        if name != "ns/c[0]" {
            assert!(
                second.contains(&(name.clone(), *id)),
                "{name} changed id: {second:?}"
            );
        }
    }
    assert!(!second.iter().any(|(n, _)| n == "ns/c[0]"));
    let st = l4::status(&root.0).unwrap();
    assert_eq!(st.prefixes.len(), 3);
    assert!(
        st.prefixes
            .iter()
            .all(|p| !p.net.to_string().starts_with("2001:"))
    );

    // The plane's own view agrees with the pins.
    let stats = plane.stats().unwrap();
    assert_eq!(stats.rules.len(), 3);
    let report = plane.sync(&b).unwrap();
    assert_eq!((report.added, report.updated, report.removed), (0, 0, 0));
    plane.detach().unwrap();
    assert!(!l4::pin_dir(&root.0).exists());
}

#[test]
fn detach_cleans_up_and_status_says_so() {
    if !privileged("detach_cleans_up_and_status_says_so") {
        return;
    }
    let root = Root::new("detach");
    drop(Plane::start_with(&root.opts(), &[], XdpMode::Auto, &rules_a()).unwrap());
    assert!(l4::pin_dir(&root.0).join("maps").exists());
    assert!(l4::detach(&root.0).unwrap());
    assert!(!root.0.exists());
    assert!(matches!(l4::status(&root.0), Err(L4Error::NotPinned(_))));
    assert!(!l4::detach(&root.0).unwrap());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    if !privileged("bad_input_is_an_error_not_a_panic") {
        return;
    }
    let root = Root::new("bad");
    for name in ["", "a/b", "waytoolonginterfacename", "x y"] {
        let err = Plane::start_with(&root.opts(), &[name.into()], XdpMode::Auto, &rules_a())
            .err()
            .unwrap();
        assert!(matches!(err, L4Error::BadInterfaceName(_)), "{name}: {err}");
    }
    let err = Plane::start_with(
        &root.opts(),
        &["llmgwnone0".into()],
        XdpMode::Auto,
        &rules_a(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, L4Error::UnknownInterface(_)), "{err}");
    assert!(!err.is_unavailable());
    let mut plane = Plane::start_with(&root.opts(), &[], XdpMode::Auto, &rules_a()).unwrap();
    // One owner at a time.
    let err = Plane::start_with(&root.opts(), &[], XdpMode::Auto, &rules_a())
        .err()
        .unwrap();
    assert!(matches!(err, L4Error::InUse(_)), "{err}");
    let mut long = rules_a();
    long.entries
        .push(entry("10.0.0.0/8", &"n".repeat(1000), None));
    assert!(matches!(
        plane.sync(&long),
        Err(L4Error::RuleNameTooLong { .. })
    ));
    // The failed sync changed nothing.
    assert_eq!(l4::status(&root.0).unwrap().prefixes.len(), 3);
    let report = plane.sync(&rules_a()).unwrap();
    assert_eq!((report.added, report.removed), (0, 0));
}

#[test]
fn the_ipv6_host_mirror_is_rebuilt_from_the_trie_when_adopting() {
    if !privileged("the_ipv6_host_mirror_is_rebuilt_from_the_trie_when_adopting") {
        return;
    }
    let root = Root::new("mirror");
    let mut rules = rules_a();
    rules
        .entries
        .push(entry("2001:db8:1::7/128", "ns/h[0]", Some(&[443])));
    rules
        .entries
        .push(entry("2001:db8:2::8/128", "ns/h[1]", None));
    let plane = Plane::start_with(&root.opts(), &[], XdpMode::Auto, &rules).unwrap();
    assert!(plane.maps_match_last_sync().unwrap());
    drop(plane);

    // Maps as a binary without the /128 mirror left them: no such pin.
    let mirror = l4::pin_dir(&root.0).join("maps").join("LLMGW_HOST_V6");
    std::fs::remove_file(&mirror).unwrap();

    // The next plane creates the mirror and fills it from the trie before
    // anything runs on it; nothing else changes.
    let mut plane = Plane::start_with(&root.opts(), &[], XdpMode::Auto, &rules).unwrap();
    assert!(mirror.exists());
    assert!(plane.maps_match_last_sync().unwrap());
    let report = plane.sync(&rules).unwrap();
    assert_eq!((report.added, report.updated, report.removed), (0, 0, 0));

    // Removing a /128 removes it from both.
    rules.entries.pop();
    plane.sync(&rules).unwrap();
    assert!(plane.maps_match_last_sync().unwrap());
    plane.detach().unwrap();
}
