//! Configuration errors. Each names where the problem is (file, line and
//! document; resource kind and `namespace/name`; field path) and what it is,
//! so a user can fix it without reading llmgw's source.

use std::{fmt, io, path::PathBuf};

use thiserror::Error;

use super::Source;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}:{column}: YAML syntax error: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A problem with one resource; `field` is a dotted path such as
    /// `spec.configs.defaultConfig.openAIConfig.stream` (empty for the whole resource).
    #[error("{}", Located { at, resource, field, message })]
    Invalid {
        at: Option<Source>,
        /// `Kind namespace/name`, when known.
        resource: Option<String>,
        field: String,
        message: String,
    },
    #[error("no YAML files found in {}", .paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoFiles { paths: Vec<PathBuf> },
    #[error("no resources in {}: every file is empty", .files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoDocuments { files: Vec<PathBuf> },
    /// A problem with the configuration as a whole (flags, conflicts between resources).
    #[error("{0}")]
    Global(String),
}

struct Located<'a> {
    at: &'a Option<Source>,
    resource: &'a Option<String>,
    field: &'a String,
    message: &'a String,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = self.at {
            write!(f, "{at}: ")?;
        }
        if let Some(r) = self.resource {
            write!(f, "{r}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(self.message)
    }
}

/// Every error found in one load or validation, in the order found.
#[derive(Debug, Default, Error)]
pub struct ErrorList(pub Vec<ConfigError>);

impl ErrorList {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Ok(value)` when nothing was recorded, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, ErrorList> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ErrorList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ErrorList {
    fn from(e: ConfigError) -> Self {
        ErrorList(vec![e])
    }
}
