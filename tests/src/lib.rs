//! Test kit for woa.
