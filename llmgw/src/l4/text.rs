//! A small text form of [`L4Rules`] for the developer command
//! `llmgw xdp serve` and the end-to-end tests (the real gateway gets its
//! rules from the policy compiler):
//!
//! ```text
//! # comment
//! listen 8080 8443
//! deny 10.0.0.0/8 ns/policy[0]
//! deny 10.1.2.3/32 ns/policy[1] ports=443,8443
//! ```

use super::{DenyEntry, L4Rules};

/// Parses the text form; errors name the line.
pub fn parse_rules(text: &str) -> Result<L4Rules, String> {
    let mut rules = L4Rules::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let err = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        match words.next() {
            None => {}
            Some("listen") => {
                for w in words {
                    rules
                        .listener_ports
                        .push(w.parse().map_err(|_| err("bad port"))?);
                }
            }
            Some("deny") => {
                let net = words
                    .next()
                    .ok_or_else(|| err("missing network"))?
                    .parse()
                    .map_err(|_| err("bad network"))?;
                let rule = words
                    .next()
                    .ok_or_else(|| err("missing rule name"))?
                    .to_owned();
                let ports = match words.next() {
                    None => None,
                    Some(w) => {
                        let list = w
                            .strip_prefix("ports=")
                            .ok_or_else(|| err("expected ports=..."))?;
                        let mut ports = Vec::new();
                        for p in list.split(',').filter(|p| !p.is_empty()) {
                            ports.push(p.parse().map_err(|_| err("bad port"))?);
                        }
                        Some(ports)
                    }
                };
                if words.next().is_some() {
                    return Err(err("trailing words"));
                }
                rules.entries.push(DenyEntry { net, rule, ports });
            }
            Some(_) => return Err(err("expected `listen` or `deny`")),
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let r =
            parse_rules("listen 80 443\n# x\ndeny 10.0.0.0/8 a\ndeny ::1/128 b ports=443,80 # c\n")
                .unwrap();
        assert_eq!(r.listener_ports, vec![80, 443]);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[1].ports, Some(vec![443, 80]));
        assert!(parse_rules("deny 10.0.0.0/33 a").is_err());
        assert!(parse_rules("listen 70000").is_err());
        assert!(parse_rules("allow 10.0.0.0/8 a").is_err());
    }
}
