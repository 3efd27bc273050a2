//! The seed's job: key policies (template, lint and explain) and key provisioning on KMS.

mod keys;
mod policy;

pub use keys::{check_alias_name, key_metadata_json, KeyAdmin};
pub use policy::{
    KeyPolicy, PolicyError, PolicyReport, ADMIN_ACTIONS, GRANT_ACTIONS, USER_ACTIONS,
};
