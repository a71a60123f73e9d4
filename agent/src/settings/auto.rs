//! `"auto"` in the settings file: detect the value on the host, or use the one given.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Auto<T> {
    #[default]
    Detect,
    Given(T),
}

impl<T> Auto<T> {
    pub fn given(&self) -> Option<&T> {
        match self {
            Auto::Detect => None,
            Auto::Given(v) => Some(v),
        }
    }
}

impl<'de> Deserialize<'de> for Auto<PathBuf> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "auto" => Auto::Detect,
            p => Auto::Given(PathBuf::from(p)),
        })
    }
}

impl<'de> Deserialize<'de> for Auto<String> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)? {
            s if s == "auto" => Auto::Detect,
            s => Auto::Given(s),
        })
    }
}

/// An optional path where the settings file writes `""` for "none".
pub fn empty_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}
