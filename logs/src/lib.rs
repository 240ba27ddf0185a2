//! placeholder, replaced by the logs work
