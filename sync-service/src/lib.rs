//! woa-sync: the Pulling/Posting service of the Margo Workload Orchestration Agent.
pub mod source;
