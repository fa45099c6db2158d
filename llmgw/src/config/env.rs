//! `${VAR}` in configuration string values: where values come from (the
//! process environment, or a map in tests), substitution with defaults
//! (`${VAR:-default}`), and keeping substituted values (keys) out of error
//! messages.

use std::collections::HashMap;

use serde_norway::Value;

/// Where `${VAR}` values come from. Tests pass a map; the binary the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// What expanding `${...}` in one document did.
#[derive(Default)]
pub(super) struct Expansion {
    /// `(variable, value)` for every variable substituted.
    pub substituted: Vec<(String, String)>,
    /// `(field, message)` for every variable that could not be.
    pub errors: Vec<(String, String)>,
}

impl Expansion {
    /// `message` with every substituted value replaced by `${NAME}`: values
    /// of four characters or more wherever they appear, shorter ones only as
    /// a whole quoted string (so `"1"` does not mangle `u16`).
    pub fn redact(&self, mut message: String) -> String {
        let mut subs: Vec<&(String, String)> = self.substituted.iter().collect();
        subs.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        for (name, value) in subs {
            if value.is_empty() {
                continue;
            }
            let quoted = format!("{value:?}");
            message = if value.chars().count() >= 4 {
                message.replace(&quoted[1..quoted.len() - 1], &format!("${{{name}}}"))
            } else {
                message.replace(&quoted, &format!("\"${{{name}}}\""))
            };
        }
        message
    }
}

/// Replaces `${NAME}` (and `${NAME:-default}`) in every string value;
/// `$${` writes a literal `${`. Every unset variable without a default is an
/// error naming it and the field.
pub(super) fn expand_env(value: &mut Value, path: &str, env: &dyn Env, out: &mut Expansion) {
    match value {
        Value::String(s) if s.contains("${") => match expand_str(s, env, &mut out.substituted) {
            Ok(v) => *s = v,
            Err(messages) => out
                .errors
                .extend(messages.into_iter().map(|m| (path.to_string(), m))),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{path}[{i}]"), env, out);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                expand_env(v, &p, env, out);
            }
        }
        Value::Tagged(t) => expand_env(&mut t.value, path, env, out),
        _ => {}
    }
}

/// Expands one string, recording what it substituted; on failure, one
/// message per problem found in it.
fn expand_str(
    s: &str,
    env: &dyn Env,
    substituted: &mut Vec<(String, String)>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let Some(end) = tail.find('}') else {
                errors.push("unterminated ${...} (write $${ for a literal ${)".into());
                return Err(errors);
            };
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.push(format!(
                    "invalid variable name {name:?} in ${{{expr}}} (letters, digits and _ only)"
                ));
            } else {
                match (env.var(name), default) {
                    (Some(v), _) => {
                        out.push_str(&v);
                        substituted.push((name.to_string(), v));
                    }
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(format!(
                        "environment variable {name} is not set (referenced as ${{{name}}})"
                    )),
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_variables_and_defaults() {
        let e = env(&[("KEY", "sk-1"), ("M", "qwen")]);
        let x = |s: &str| expand_str(s, &e, &mut Vec::new());
        assert_eq!(x("${KEY}").unwrap(), "sk-1");
        assert_eq!(x("a-${M}-b").unwrap(), "a-qwen-b");
        assert_eq!(x("${NOPE:-x}").unwrap(), "x");
        assert_eq!(x("$${KEY}").unwrap(), "${KEY}");
        assert_eq!(x("^a$").unwrap(), "^a$");
        assert_eq!(
            x("${NOPE}").unwrap_err(),
            ["environment variable NOPE is not set (referenced as ${NOPE})"]
        );
        assert!(x("${KEY").unwrap_err()[0].contains("unterminated"));
        assert!(x("${1X}").unwrap_err()[0].contains("invalid"));
        // Every unset variable of a string is named, not just the first.
        let errs = x("${A}-${KEY}-${B}").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].contains(" A ") && errs[1].contains(" B "),
            "{errs:?}"
        );
    }
}
