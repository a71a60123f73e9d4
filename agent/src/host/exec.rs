//! Commands run as the host (restart a unit, validate a config with the host's containerd).
