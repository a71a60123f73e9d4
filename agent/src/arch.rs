//! CPU architecture in Kubernetes' GOARCH spelling (what `status.nodeInfo.architecture` says), with the
//! uname/Rust spellings that release assets use accepted as aliases.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
    Arm,
    Ppc64le,
    S390x,
    Riscv64,
}

impl Arch {
    /// The architecture a release asset's file name names (`-x86_64-`, `-aarch64.`, `_amd64`…).
    pub fn in_url(url: &str) -> Option<Arch> {
        let file = url.rsplit('/').next().unwrap_or(url).to_ascii_lowercase();
        file.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .flat_map(|t| t.split('_').chain(std::iter::once(t)))
            .find_map(|t| t.parse::<Arch>().ok())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Arm => "arm",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The architecture of the machine the agent runs on, from `uname -m`.
    pub fn of_this_machine() -> anyhow::Result<Arch> {
        let uts = nix::sys::utsname::uname()?;
        let machine = uts.machine().to_string_lossy().into_owned();
        machine
            .parse()
            .map_err(|_| anyhow::anyhow!("unsupported machine architecture {machine:?} (uname -m)"))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "amd64" | "x86_64" | "x86-64" => Arch::Amd64,
            "arm64" | "aarch64" => Arch::Arm64,
            "arm" | "armv7l" | "armv7" | "armhf" => Arch::Arm,
            "ppc64le" => Arch::Ppc64le,
            "s390x" => Arch::S390x,
            "riscv64" => Arch::Riscv64,
            other => {
                return Err(format!(
                    "unknown architecture {other:?}: expected amd64, arm64, arm, ppc64le, s390x or riscv64 (x86_64 and aarch64 are accepted too)"
                ))
            }
        })
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_kubernetes_names() {
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::Amd64);
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert_eq!("arm64".parse::<Arch>().unwrap().to_string(), "arm64");
        assert!("mips".parse::<Arch>().is_err());
    }

    #[test]
    fn this_machine_is_known() {
        assert!(Arch::of_this_machine().is_ok());
    }
}
