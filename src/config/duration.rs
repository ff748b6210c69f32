//! Serde helpers for durations written as `"90s"`, `"5m"`, `"1h"`, `"5d"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::ValueError;

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Parses one duration, with an error that repeats the offending text.
pub fn parse(text: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(text.trim()).map_err(|e| ValueError::Duration {
        text: text.to_string(),
        reason: e.to_string(),
    })
}

pub mod list {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| parse(t).map_err(serde::de::Error::custom))
            .collect()
    }
}
