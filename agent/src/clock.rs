//! Wall-clock time as RFC 3339 text, as the state file and the status annotation write it.

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
