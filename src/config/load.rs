//! Loading the configuration: the TOML file, then `SMIMEGW__SECTION__KEY`
//! environment overrides, then every check in `validate`. Errors name the
//! file and the key and say what is wrong; all of them are reported at once
//! where the format allows it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::{validate, Settings};

/// Keys whose environment override is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "server.listen",
    "server.submission_listen",
    "server.internal_domains",
    "server.trusted_networks",
    "queue.retry_intervals",
];

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `server.listen[0]`, or empty for the whole file.
    pub key: String,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// Loads and validates the configuration at `path`, with overrides from the
/// process environment.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with_env(path, None)
}

/// Like [`load`], with the environment given explicitly (tests) or taken
/// from the process when `env` is `None`.
pub fn load_with_env(
    path: &Path,
    env: Option<HashMap<String, String>>,
) -> Result<Settings, ConfigError> {
    load_inner(path, env, &[])
}

/// Like [`load`], with `overrides` (`("policy.oces2_cutoff", "2027-03-01")`)
/// applied over the file and the environment, as if written there: for
/// "what if" questions. The file is only read.
pub fn load_with_overrides(
    path: &Path,
    overrides: &[(String, String)],
) -> Result<Settings, ConfigError> {
    load_inner(path, None, overrides)
}

/// An override's value as the configuration takes it: `[a, b]` (items
/// optionally quoted) is a list, as is `a,b` for a key that is always a
/// list (`server.internal_domains`); anything else is one value, parsed
/// like the file's (a date, a number, a string).
fn override_value(key: &str, value: &str) -> config::Value {
    let trimmed = value.trim();
    let items = if let Some(inner) = trimmed.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        inner
    } else if LIST_KEYS.contains(&key) {
        trimmed
    } else {
        return config::Value::from(value);
    };
    let list: Vec<String> = items
        .split(',')
        .map(|item| item.trim().trim_matches('"').to_string())
        .filter(|item| !item.is_empty())
        .collect();
    config::Value::from(list)
}

fn load_inner(
    path: &Path,
    env: Option<HashMap<String, String>>,
    overrides: &[(String, String)],
) -> Result<Settings, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    if !path.is_file() {
        return Err(fail(vec![Problem {
            key: String::new(),
            message: "no such configuration file".into(),
        }]));
    }
    let mut environment = Environment::with_prefix("SMIMEGW")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(env);
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    let mut builder = Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml).required(true))
        .add_source(environment);
    for (key, value) in overrides {
        builder = builder
            .set_override(key.as_str(), override_value(key, value))
            .map_err(|e| {
                fail(vec![Problem {
                    key: key.clone(),
                    message: e.to_string(),
                }])
            })?;
    }
    let built = builder.build().map_err(|e| {
        fail(vec![Problem {
            key: String::new(),
            message: e.to_string(),
        }])
    })?;

    let mut unknown = Vec::new();
    let parsed: Result<Settings, _> =
        serde_ignored::deserialize(built, |p| unknown.push(p.to_string()));
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|key| Problem {
            key,
            message: "unknown key".into(),
        })
        .collect();
    match parsed {
        Ok(mut settings) => {
            problems.extend(validate::check(&settings));
            if problems.is_empty() {
                settings.normalize_addresses();
                Ok(settings)
            } else {
                Err(fail(problems))
            }
        }
        Err(e) => {
            problems.push(deserialize_problem(&e));
            Err(fail(problems))
        }
    }
}

/// Splits the `config` crate's "... for key `a.b` ..." message into key and text.
fn deserialize_problem(e: &config::ConfigError) -> Problem {
    let text = e.to_string();
    if let Some((message, rest)) = text.split_once(" for key `") {
        if let Some((key, tail)) = rest.split_once('`') {
            return Problem {
                key: key.to_string(),
                message: format!("{message}{tail}"),
            };
        }
    }
    Problem {
        key: String::new(),
        message: text,
    }
}

/// Settings from TOML text, validated, with no environment overrides: for
/// unit tests of the rooms that take settings.
#[cfg(test)]
pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().map_err(|e| ConfigError {
        file: "test.toml".into(),
        problems: vec![Problem {
            key: String::new(),
            message: e.to_string(),
        }],
    })?;
    let path = dir.path().join("test.toml");
    std::fs::write(&path, text).map_err(|e| ConfigError {
        file: path.clone(),
        problems: vec![Problem {
            key: String::new(),
            message: e.to_string(),
        }],
    })?;
    load_with_env(&path, Some(HashMap::new()))
}

/// Minimal valid settings (internal domain `example-law.dk`) followed by
/// `extra` TOML: for unit tests.
#[cfg(test)]
pub fn test_settings(extra: &str) -> Settings {
    let text = format!(
        "[server]\nhostname = \"gw.example-law.dk\"\nlisten = [\"127.0.0.1:2525\"]\ninternal_domains = [\"example-law.dk\"]\n\
         [relay]\ninternal = \"127.0.0.1:25\"\nexternal = \"127.0.0.1:26\"\n\
         [spool]\ndir = \"/nonexistent\"\n{extra}"
    );
    match from_toml(&text) {
        Ok(s) => s,
        Err(e) => panic!("test settings: {e}"),
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    fn settings_with(sets: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "[server]\nhostname = \"gw\"\nlisten = [\"127.0.0.1:2525\"]\n\
             internal_domains = [\"example-law.dk\"]\n\
             [spool]\ndir = \"/nonexistent\"\n\
             [relay]\ninternal = \"127.0.0.1:25\"\nexternal = \"127.0.0.1:26\"\n",
        )
        .expect("write");
        let sets: Vec<(String, String)> = sets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_with_overrides(&path, &sets)
    }

    #[test]
    fn a_list_key_can_be_set_from_the_command_line() {
        let plain = settings_with(&[]).expect("loads");
        assert_eq!(plain.server.internal_domains, vec!["example-law.dk"]);
        for value in ["[a.dk, \"b.dk\"]", "a.dk,b.dk", " [ a.dk ,b.dk ] "] {
            let s = settings_with(&[("server.internal_domains", value)]).expect(value);
            assert_eq!(s.server.internal_domains, vec!["a.dk", "b.dk"], "{value}");
        }
        // One value stays one value, commas and all, for a key that is
        // not a list.
        let s = settings_with(&[("server.hostname", "gw,2")]).expect("loads");
        assert_eq!(s.server.hostname, "gw,2");
    }
}
