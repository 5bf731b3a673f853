//! Command-line parsing: each command declares the options it takes, so a misspelt option is
//! an error naming it instead of being silently ignored.

use std::collections::BTreeMap;
use std::str::FromStr;

use recon::{Error, Result};

/// What one command accepts.
pub struct Spec {
    /// The command's name, for messages (`generate`).
    pub command: &'static str,
    /// Options that take a value (`--seed`), each possibly repeated.
    pub values: &'static [&'static str],
    /// Options without a value (`--offline`).
    pub switches: &'static [&'static str],
    /// Short spellings: (`-o`, `--output`).
    pub aliases: &'static [(&'static str, &'static str)],
    /// Whether bare arguments (input files) are accepted.
    pub positionals: bool,
}

/// Parsed arguments of one command.
pub struct Args {
    values: BTreeMap<String, Vec<String>>,
    switches: Vec<String>,
    positionals: Vec<String>,
}

impl Args {
    /// Parses `raw` (the arguments after the command name) against `spec`. `--flag=value` and
    /// `--flag value` are both accepted; after `--` every argument is positional.
    pub fn parse(spec: &Spec, raw: &[String]) -> Result<Self> {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut switches = Vec::new();
        let mut positionals = Vec::new();
        let mut iter = raw.iter();
        let mut only_positionals = false;
        while let Some(arg) = iter.next() {
            if only_positionals || !arg.starts_with('-') || arg == "-" {
                if !spec.positionals {
                    return Err(Error::invalid_argument(format!(
                        "unexpected argument '{arg}' for 'recon {}' (see recon {} --help)",
                        spec.command, spec.command
                    )));
                }
                positionals.push(arg.clone());
                continue;
            }
            if arg == "--" {
                only_positionals = true;
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value)),
                _ => (arg.as_str(), None),
            };
            let name = spec
                .aliases
                .iter()
                .find(|(short, _)| *short == name)
                .map_or(name, |(_, long)| long);
            if name == "--help" || name == "-h" || spec.switches.contains(&name) {
                if inline.is_some() {
                    return Err(Error::invalid_argument(format!("{name} takes no value")));
                }
                switches.push(canonical(name).to_string());
            } else if spec.values.contains(&name) {
                let value = match inline {
                    Some(value) => value.to_string(),
                    None => match iter.next() {
                        Some(value) if !value.starts_with("--") => value.clone(),
                        _ => return Err(Error::invalid_argument(format!("{arg} needs a value"))),
                    },
                };
                values.entry(name.to_string()).or_default().push(value);
            } else {
                return Err(Error::invalid_argument(format!(
                    "unknown option '{name}' for 'recon {}' (see recon {} --help)",
                    spec.command, spec.command
                )));
            }
        }
        Ok(Self {
            values,
            switches,
            positionals,
        })
    }

    /// The value of an option given exactly once.
    pub fn one(&self, flag: &str) -> Result<&str> {
        self.optional(flag)?
            .ok_or_else(|| Error::invalid_argument(format!("{flag} is required")))
    }

    /// The value of an option given at most once.
    pub fn optional(&self, flag: &str) -> Result<Option<&str>> {
        match self.values.get(flag).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([value]) => Ok(Some(value)),
            Some(_) => Err(Error::invalid_argument(format!(
                "{flag} given more than once"
            ))),
        }
    }

    /// Every value of a repeatable option, in order.
    pub fn all(&self, flag: &str) -> &[String] {
        self.values.get(flag).map_or(&[], Vec::as_slice)
    }

    pub fn switch(&self, flag: &str) -> bool {
        self.switches.iter().any(|s| s == flag)
    }

    pub fn help(&self) -> bool {
        self.switch("--help")
    }

    pub fn positionals(&self) -> &[String] {
        &self.positionals
    }

    /// An optional number, with a message naming the option, the value and what is expected.
    pub fn number<T: FromStr>(&self, flag: &str, expected: &str) -> Result<Option<T>> {
        self.optional(flag)?
            .map(|value| {
                value.trim().parse::<T>().map_err(|_| {
                    Error::invalid_argument(format!("{flag} '{value}': expected {expected}"))
                })
            })
            .transpose()
    }
}

fn canonical(name: &str) -> &str {
    if name == "-h" {
        "--help"
    } else {
        name
    }
}
