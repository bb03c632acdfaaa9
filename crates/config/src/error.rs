//! Configuration errors that name the file, the line and column, and what was expected.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The I/O error is part of the message, not a `source`: `{:#}` would print it twice.
    #[error("{}: cannot read the topology file: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file was read, but something in it is wrong.
    #[error("{0}")]
    Invalid(Located),
}

/// A message pinned to a place in the file, shown with the offending line.
#[derive(Debug)]
pub struct Located {
    pub path: PathBuf,
    /// 1-based; 0 when the problem concerns the file as a whole.
    pub line: usize,
    pub column: usize,
    pub message: String,
    source_line: String,
}

impl ConfigError {
    pub(crate) fn at(path: &Path, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let (line, column, source_line) = match span {
            Some(span) => {
                // A span inside a character (never from toml, but cheap to rule out) moves to
                // the character's start.
                let mut start = span.start.min(text.len());
                while !text.is_char_boundary(start) {
                    start -= 1;
                }
                let before = &text[..start];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let column = text[line_start..start].chars().count() + 1;
                let source_line = text[line_start..].lines().next().unwrap_or("").to_string();
                (line, column, source_line)
            }
            None => (0, 0, String::new()),
        };
        ConfigError::Invalid(Located {
            path: path.to_path_buf(),
            line,
            column,
            message,
            source_line,
        })
    }

    pub(crate) fn from_toml(path: &Path, text: &str, error: &toml::de::Error) -> Self {
        let message = error.message().trim_end().to_string();
        Self::at(path, text, error.span(), message)
    }

    /// The line the error points at, when it points at one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid(located) if located.line > 0 => Some(located.line),
            _ => None,
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.path.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}\n{:>5} | {}",
            self.path.display(),
            self.line,
            self.column,
            self.message,
            self.line,
            self.source_line
        )
    }
}
