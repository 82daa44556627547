//! Fuzz target bodies (hidden; not a stable API).
