//! placeholder, replaced by the guests work
